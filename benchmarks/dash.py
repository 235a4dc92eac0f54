"""The `dash` workload of /work/shared/BENCHMARKS.md: plain GRPO vs DASH from one warm start.

    tailor-jax run configs/quickstart.yaml          # makes the warm start runs/quickstart/sft/model
    python benchmarks/dash.py [--init runs/quickstart/sft/model] [--rollouts 1536]

    tailor-jax run configs/gf-improve.yaml          # or GRPO on 6-9 step chains from its SFT model
    python benchmarks/dash.py --init runs/gf-improve/sft/model --levels 6 7 8 9 \
        --task-options '{"p": 11, "tag_pool": 9, "steps": "6-9"}' --rollouts 19200 --eval-rollouts 1024 \
        --max-new-tokens 320 --per-level 30

Both runs see the same number of rollouts (by default on GF(11) 3-5 step chains, the
quickstart's GRPO stage), from the same SFT model:

- plain GRPO: 8 prompts x G=8 per step, one update per step (64 rows, one batch);
- DASH: 32 prompts x G=8 per step sampled at once with one weight version (preemptive
  sampling), rows with |A| <= tau dropped before any trainer pass (gradient filtering), the
  survivors packed into 64-row micro-batches, one accumulated update per step.

DASH takes 4x the rollouts per optimizer step, so its learning rate is `--dash-lr` (default
2 x `--lr`, the square-root rule for a 4x batch). Held-out greedy accuracy (`--levels`) is
measured after the same numbers of rollouts (every `--eval-rollouts`). The clock is the
training time only (the trainer's `step_time`: sampling + reference + update; evaluation
excluded). Prints one JSON line per system and a table: the final accuracies, and the training
time DASH needs to reach plain GRPO's final accuracy against the time plain GRPO trained for it
(its whole run) and against the first time plain GRPO's curve touched it. Both run as the `tailor-jax` CLI does: on CPU one JAX device per
core on the mesh's `data` axis (since 2026-12-05; before, one device).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PROMPTS, GROUP, DASH_FACTOR = 8, 8, 4


def run_system(name: str, init: Path, work: Path, rollouts: int, args) -> dict:
    from tailor_jax.config import config_from_dict
    from tailor_jax.train import grpo_trainer

    dash = name == "dash"
    prompts = PROMPTS * (DASH_FACTOR if dash else 1)
    steps = rollouts // (prompts * GROUP)
    eval_every = args.eval_rollouts // (prompts * GROUP)  # the same rollouts between evaluations
    cfg = config_from_dict(grpo_trainer.GRPOConfig, {
        "run_dir": str(work / name), "init": str(init), "task": "gf",
        "task_options": args.task_options, "seed": args.seed, "steps": steps, "progress": False,
        "rollout": {"prompts_per_step": prompts, "num_generations": GROUP, "max_new_tokens": args.max_new_tokens,
                    "temperature": 1.0},
        "dash": {"filter": dash, "tau": args.tau, "micro_batch_size": PROMPTS * GROUP if dash else 0},
        "optimizer": {"lr": (args.dash_lr or 2 * args.lr) if dash else args.lr, "warmup_steps": 0},
        "eval": {"levels": args.levels, "per_level": args.per_level, "every": eval_every},
        "checkpoint": {"every_steps": 10**6, "keep": 1},
    })
    start = time.perf_counter()
    result = grpo_trainer.train(cfg)
    clock, curve = 0.0, []
    for entry in result.history:
        clock += entry.get("step_time", 0.0)
        if "eval/acc" in entry:
            curve.append({"step": entry["step"], "rollouts": entry["step"] * prompts * GROUP,
                          "train_seconds": round(clock, 2), "acc": entry["eval/acc"]})
    kept = [e["dash/kept_frac"] for e in result.history if "dash/kept_frac" in e]
    return {"system": name, "steps": steps, "rollouts": steps * prompts * GROUP, "train_seconds": round(clock, 2),
            "wall_seconds": round(time.perf_counter() - start, 1), "final_acc": curve[-1]["acc"],
            "mean_kept_frac": round(sum(kept) / max(len(kept), 1), 3), "curve": curve}


def time_to(curve: list[dict], target: float) -> float | None:
    return next((point["train_seconds"] for point in curve if point["acc"] >= target and point["step"] > 0), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="runs/quickstart/sft/model", help="SFT model directory (HF format + tokenizer)")
    parser.add_argument("--rollouts", type=int, default=1536, help="rollouts per system (a multiple of 256)")
    parser.add_argument("--lr", type=float, default=1e-4, help="plain GRPO's learning rate (the quickstart's)")
    parser.add_argument("--dash-lr", type=float, default=None, help="DASH's learning rate (default 2 x --lr)")
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--task-options", type=json.loads, default={"p": 11, "steps": "3-5"},
                        help="GF task options of the GRPO problems, as JSON")
    parser.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5], help="held-out evaluation levels")
    parser.add_argument("--per-level", type=int, default=60, help="held-out problems per level")
    parser.add_argument("--eval-rollouts", type=int, default=256, help="rollouts between evaluations (a multiple of 256)")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    from tailor_jax.parallel.cpu import configure_cpu_devices

    configure_cpu_devices()
    init = Path(args.init)
    if not (init / "config.json").is_file():
        print(f"dash.py: no model at {init}; run `tailor-jax run configs/quickstart.yaml` first or pass --init DIR",
              file=sys.stderr)
        return 2
    for name in ("rollouts", "eval_rollouts"):
        if getattr(args, name) % (PROMPTS * GROUP * DASH_FACTOR):
            print(f"dash.py: --{name.replace('_', '-')} must be a multiple of {PROMPTS * GROUP * DASH_FACTOR}",
                  file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="dash_bench_"))
    results = [run_system(name, init, work, args.rollouts, args) for name in ("plain", "dash")]
    target = results[0]["final_acc"]
    for r in results:
        r["target_acc"] = target
        r["seconds_to_target"] = time_to(r["curve"], target)
        print(json.dumps(r))
    plain, dash = results
    print(f"\n{'system':8} {'rollouts':>8} {'train s':>8} {'final acc':>9} {'s to plain final':>17} {'kept':>6}")
    for r in results:
        reach = "never" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        print(f"{r['system']:8} {r['rollouts']:>8} {r['train_seconds']:>8.1f} {r['final_acc']:>9.3f} {reach:>17} "
              f"{r['mean_kept_frac']:>6.2f}")
    print(f"DASH / plain training time at equal rollouts: {dash['train_seconds'] / plain['train_seconds']:.2f}x")
    if dash["seconds_to_target"] is None:
        print(f"DASH did not reach plain GRPO's final accuracy ({target:.3f}) within the same rollouts")
    else:
        print(f"DASH reaches plain GRPO's final accuracy ({target:.3f}) in {dash['seconds_to_target']:.1f} s: "
              f"{dash['seconds_to_target'] / plain['train_seconds']:.2f}x plain's training time for it "
              f"({plain['train_seconds']:.1f} s), {dash['seconds_to_target'] / plain['seconds_to_target']:.2f}x the "
              f"time plain's curve first touched it ({plain['seconds_to_target']:.1f} s)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
