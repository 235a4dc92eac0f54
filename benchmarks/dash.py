"""The `dash` workload of /work/shared/BENCHMARKS.md, as the DASH paper compares: three arms from one
warm start with EQUAL optimizer steps, the same learning rate and the same rollouts per step.

    tailor-jax run configs/quickstart.yaml          # makes the warm start runs/quickstart/sft/model
    python benchmarks/dash.py [--init runs/quickstart/sft/model] [--seeds 0 1 2] [--steps 8]
        [--out benchmarks/results/dash_arms.json]
    python benchmarks/dash.py --ablation beta         # beta = 0 vs beta > 0 (accuracy, completion length)
    python benchmarks/dash.py --ablation iterations   # num_iterations 1 vs 2

Arms (every step: `--prompts` x G = `--group` rows, updated in `--micro`-row micro-batches whose
gradients are accumulated into ONE optimizer update per step):

- `standard`: standard GRPO as TRL and the public DASH code run it: one sampler call per update
  micro-batch (`rollout.generation_batch_size` = `--micro`);
- `preemptive`: DASH's preemptive sampling alone: all the step's rows in one sampler call
  (`generation_batch_size: 0`);
- `preemptive+filter`: DASH: preemptive sampling + gradient filtering (rows with |A| <= `--tau`
  dropped before any trainer pass).

Each arm runs once per seed (`--seeds`; the seed sets the prompts, the sampler's randomness and
the held-out problems, which are the same across arms for one seed). Held-out greedy accuracy
(`--levels`, `--per-level` problems each, none from the SFT pool) is measured before the first
step and every `--eval-every` steps; the clock is training time only (the trainer's `step_time`:
sampling + reference + update, evaluations excluded) and leaves out each run's first step, which
compiles (its time is reported as `first_step_seconds`). Per arm: the time split, rows and
tokens generated / trained / filtered (the trainer's `compute/*_total` metrics), accuracy against
training seconds, the time to a target accuracy (per seed: the `standard` arm's final accuracy,
or `--target`), the final accuracy; mean +- std over seeds. Prints a table; `--out` writes JSON
with the commit and date.

`--ablation beta|iterations` runs the `--ablation-arm` (default `preemptive+filter`) twice per
seed instead: with `loss.beta` 0 and `--beta`, or with `loss.num_iterations` 1 and 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = {
    "standard": {"generation": "micro", "filter": False},
    "preemptive": {"generation": 0, "filter": False},
    "preemptive+filter": {"generation": 0, "filter": True},
}


def variants(args) -> list[tuple[str, str, dict]]:
    """(variant name, arm, loss overrides) to run for every seed."""
    if args.ablation == "beta":
        return [(f"{args.ablation_arm} beta=0", args.ablation_arm, {"beta": 0.0}),
                (f"{args.ablation_arm} beta={args.beta:g}", args.ablation_arm, {"beta": args.beta})]
    if args.ablation == "iterations":
        return [(f"{args.ablation_arm} mu=1", args.ablation_arm, {"num_iterations": 1}),
                (f"{args.ablation_arm} mu=2", args.ablation_arm, {"num_iterations": 2})]
    return [(arm, arm, {}) for arm in ARMS]


def run_one(name: str, arm: str, loss: dict, seed: int, init: Path, work: Path, args) -> dict:
    from tailor_jax.config import config_from_dict
    from tailor_jax.train import grpo as grpo_lib

    spec = ARMS[arm]
    exclude = init.parent.parent / "data" / "train.jsonl"  # the SFT pool of a `tailor-jax run` directory
    cfg = config_from_dict(grpo_lib.GRPOConfig, {
        "run_dir": str(work / f"{name.replace(' ', '_')}_seed{seed}"), "init": str(init), "task": "gf",
        "task_options": args.task_options, "seed": seed, "steps": args.steps, "progress": False,
        "rollout": {"prompts_per_step": args.prompts, "num_generations": args.group, "max_new_tokens": args.max_new_tokens,
                    "temperature": 1.0, "generation_batch_size": args.micro if spec["generation"] == "micro" else 0},
        "dash": {"filter": spec["filter"], "tau": args.tau, "micro_batch_size": args.micro},
        "loss": {"beta": 0.0, **loss},
        "optimizer": {"lr": args.lr, "warmup_steps": 0},
        "eval": {"levels": args.levels, "per_level": args.per_level, "every": args.eval_every,
                 "exclude_file": str(exclude) if exclude.is_file() else None},
        "checkpoint": {"every_steps": 10**6, "keep": 1, "async_save": False},
    })
    start = time.perf_counter()
    result = grpo_lib.train(cfg)
    steps = [e for e in result.history if e["step"] >= 1 and "step_time" in e]
    clock, curve = 0.0, []
    for entry in result.history:
        if entry["step"] >= 2:  # the first step compiles: left out of the clock
            clock += entry.get("step_time", 0.0)
        if "eval/acc" in entry:
            curve.append({"step": entry["step"], "train_seconds": round(clock, 2), "acc": entry["eval/acc"]})
    later = steps[1:]
    last = steps[-1]
    return {
        "variant": name, "arm": arm, "seed": seed, "steps": len(steps), "loss": loss,
        "optimizer_updates": len(steps) * cfg.loss.num_iterations,
        "train_seconds": round(clock, 2), "first_step_seconds": round(steps[0]["step_time"], 2),
        "wall_seconds": round(time.perf_counter() - start, 1),
        **{f"{part}_seconds": round(sum(e[f"time/{part}"] for e in later), 2) for part in ("sampling", "generate", "reference", "update")},
        **{key: last[f"compute/{key}_total"] for key in ("sampler_calls", "rows_generated", "tokens_generated", "rows_trained",
                                                          "tokens_trained", "token_slots_trained", "rows_filtered", "tokens_filtered")},
        "mean_completion_length": round(statistics.mean(e["completions/mean_length"] for e in steps), 1),
        "final_completion_length": round(last["completions/mean_length"], 1),
        "mean_reward": round(statistics.mean(e["reward"] for e in steps), 4),
        "start_acc": curve[0]["acc"], "final_acc": curve[-1]["acc"], "curve": curve,
    }


def time_to(curve: list[dict], target: float) -> float | None:
    return next((p["train_seconds"] for p in curve if p["acc"] >= target and p["step"] > 0), None)


def spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(statistics.mean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(runs: list[dict], args) -> dict:
    names = list(dict.fromkeys(r["variant"] for r in runs))
    base = names[0]
    by_seed = {(r["variant"], r["seed"]): r for r in runs}
    for r in runs:
        target = args.target if args.target is not None else by_seed[(base, r["seed"])]["final_acc"]
        r["target_acc"] = target
        r["seconds_to_target"] = time_to(r["curve"], target)
        r["time_vs_" + base] = round(r["train_seconds"] / max(by_seed[(base, r["seed"])]["train_seconds"], 1e-9), 3)
    summary = {}
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        summary[name] = {key: spread([r[key] for r in mine]) for key in (
            "train_seconds", "sampling_seconds", "generate_seconds", "reference_seconds", "update_seconds",
            "first_step_seconds", "final_acc", "start_acc", "seconds_to_target", f"time_vs_{base}", "rows_filtered",
            "tokens_filtered", "tokens_generated", "tokens_trained", "sampler_calls", "mean_completion_length",
            "final_completion_length")}
        summary[name]["reached_target"] = f"{sum(r['seconds_to_target'] is not None for r in mine)}/{len(mine)}"
        summary[name]["acc_minus_" + base] = spread([r["final_acc"] - by_seed[(base, r["seed"])]["final_acc"] for r in mine])
    return summary


def fmt(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if s["mean"] is None else f"{s['mean'] * scale:.{digits}f}+-{s['std'] * scale:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="runs/quickstart/sft/model", help="SFT model directory (HF format + tokenizer)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (equal in every arm)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G completions per prompt")
    parser.add_argument("--micro", type=int, default=32, help="rows per update micro-batch (= standard's rows per sampler call)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of every arm (the quickstart's)")
    parser.add_argument("--tau", type=float, default=0.1, help="gradient filter threshold on |A|")
    parser.add_argument("--task-options", type=json.loads, default={"p": 11, "steps": "3-5"}, help="GF options, JSON")
    parser.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5], help="held-out evaluation levels")
    parser.add_argument("--per-level", type=int, default=30, help="held-out problems per level")
    parser.add_argument("--eval-every", type=int, default=2, help="steps between evaluations")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--target", type=float, default=None, help="target accuracy (default: per seed, the first arm's final)")
    parser.add_argument("--ablation", choices=["none", "beta", "iterations"], default="none")
    parser.add_argument("--ablation-arm", choices=list(ARMS), default="preemptive+filter")
    parser.add_argument("--beta", type=float, default=0.04, help="the KL weight of --ablation beta's beta > 0 variant")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    from tailor_jax.parallel.cpu import configure_cpu_devices

    configure_cpu_devices()
    init = Path(args.init)
    if not (init / "config.json").is_file():
        print(f"dash.py: no model at {init}; run `tailor-jax run configs/quickstart.yaml` first or pass --init DIR", file=sys.stderr)
        return 2
    rows = args.prompts * args.group
    if rows % args.micro or args.micro % args.group:
        print(f"dash.py: --micro {args.micro} must divide the {rows} rows per step in whole groups of {args.group}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="dash_bench_"))
    runs = []
    for seed in args.seeds:  # seeds outermost: a slow spell of the shared machine hits every arm alike
        for name, arm, loss in variants(args):
            runs.append(run_one(name, arm, loss, seed, init, work, args))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
    summary = summarize(runs, args)
    base = next(iter(summary))
    print(f"\n{rows} rows per step ({args.prompts} prompts x G {args.group}) in {args.micro}-row micro-batches, "
          f"{args.steps} optimizer steps, lr {args.lr:g}, seeds {args.seeds}; mean+-std over seeds; seconds exclude step 1")
    print(f"{'variant':28} {'train s':>11} {'vs ' + base[:8]:>11} {'sampling':>11} {'reference':>10} {'update':>11} "
          f"{'rows filt':>10} {'tok filt':>12} {'final acc %':>11} {'d acc pts':>10} {'s to target':>11} {'reached':>7} {'len':>9}")
    for name, s in summary.items():
        print(f"{name:28} {fmt(s['train_seconds']):>11} {fmt(s['time_vs_' + base], digits=2):>11} "
              f"{fmt(s['sampling_seconds']):>11} {fmt(s['reference_seconds']):>10} {fmt(s['update_seconds']):>11} "
              f"{fmt(s['rows_filtered'], digits=0):>10} {fmt(s['tokens_filtered'], digits=0):>12} {fmt(s['final_acc'], 100):>11} "
              f"{fmt(s['acc_minus_' + base], 100):>10} {fmt(s['seconds_to_target']):>11} {s['reached_target']:>7} "
              f"{fmt(s['mean_completion_length']):>9}")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "tailor_jax", "benchmarks/dash.py"],
                                    capture_output=True, text=True).stdout.strip())
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "benchmark": "dash", "commit": commit, "dirty": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "settings": vars(args), "summary": summary, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
