"""From-scratch SFT on GF(11) 2-5 step forward traces, then greedy exact-answer accuracy on
held-out 2-5 step problems, all within a wall-clock budget (default 10 minutes, CPU).

    python benchmarks/sft_gf.py --out benchmarks/results/sft_gf.json

Steps: generate train/held-out records (held-out problems never occur in train), run
`tailor-jax sft` in a subprocess that is sent SIGTERM when the training budget runs out (it then
saves a checkpoint at the current step), restore the newest checkpoint and decode the held-out
prompts greedily with `tailor_jax.sampling.Sampler`. Prints and writes one JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/sft_gf.json")
    parser.add_argument("--budget-s", type=float, default=600.0, help="total wall-clock budget")
    parser.add_argument("--eval-reserve-s", type=float, default=110.0, help="budget kept for the final evaluation")
    parser.add_argument("--steps", type=int, default=1000, help="schedule length (training may stop earlier)")
    parser.add_argument("--num-train", type=int, default=30000)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()

    from tailor_jax.data.jsonl import write_jsonl
    from tailor_jax.tasks import get_task, problem_key

    work = Path(args.workdir or tempfile.mkdtemp(prefix="sft_gf_"))
    work.mkdir(parents=True, exist_ok=True)
    task = get_task("gf", p=11, steps="2-5", kind="both", strategy="forward")
    train = list(task.generate(args.num_train, seed=1))
    seen = {problem_key(r) for r in train}
    test = [r for r in task.generate(args.num_test * 3, seed=2) if problem_key(r) not in seen][: args.num_test]
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "test.jsonl", test)

    config = {
        "run_dir": str(work / "run"),
        "data": {"task": "gf", "task_options": {"p": 11, "steps": "2-5", "strategy": "forward"},
                 "train_file": str(work / "train.jsonl"), "eval_file": str(work / "test.jsonl"), "seq_len": 256},
        "tokenizer": {"vocab_size": 512},
        "model": {"preset": "tiny", "overrides": {"hidden_size": 128, "intermediate_size": 384, "num_layers": 2,
                                                  "num_heads": 4, "num_kv_heads": 2, "head_dim": 32}},
        "optimizer": {"lr": 3.0e-3, "schedule": "cosine", "warmup_steps": 20, "end_lr_ratio": 0.05,
                      "weight_decay": 0.01, "grad_clip": 1.0},
        "checkpoint": {"every_steps": 100, "async_save": True},
        "mesh": {"data": 1, "fsdp": -1},
        "steps": args.steps, "batch_size": 24, "log_every": 25, "eval_every": 0, "eval_batches": 4,
        "eval_samples": 0, "progress": False, "seed": 0,
    }
    config_path = work / "sft_gf.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    train_budget = args.budget_s - args.eval_reserve_s - (time.perf_counter() - t0)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tailor_jax.cli", "sft", str(config_path)], env=env)
    try:
        proc.wait(timeout=max(train_budget, 1.0))
        stopped_early = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the trainer saves at the current step and exits
        proc.wait()
        stopped_early = True
    train_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"sft failed with exit code {proc.returncode}", file=sys.stderr)
        return 1

    os.environ.update(env)
    result = evaluate(config_path, test)
    total = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    train_logs = [m for m in metrics if "loss" in m]
    record = {
        "benchmark": "sft_gf",
        "task": "gf p=11 steps 2-5 kind both, forward traces",
        "num_train": len(train), "num_test": len(test),
        "steps_done": result["step"], "steps_scheduled": args.steps, "stopped_by_budget": stopped_early,
        "final_train_loss": train_logs[-1]["loss"] if train_logs else None,
        "train_tokens_per_s_last": train_logs[-1].get("train/tokens_per_s") if train_logs else None,
        "heldout_exact_answer_acc": result["acc"], "acc_by_steps": result["by_level"],
        "decoding": "greedy, tailor_jax.sampling.Sampler",
        "train_seconds": round(train_seconds, 1), "total_wall_clock_s": round(total, 1),
        "cpu_cores": os.cpu_count(), "note": "wall-clock on a CPU shared with other engineers' jobs",
        "model": config["model"], "batch_size": config["batch_size"], "seq_len": config["data"]["seq_len"],
    }
    print(json.dumps(record))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


def evaluate(config_path: Path, test: list[dict]) -> dict:
    """Restore the newest checkpoint of the run and decode `test` greedily."""
    import dataclasses

    from tailor_jax.config import load_config
    from tailor_jax.data import tokenizer as tok_lib
    from tailor_jax.parallel.mesh import create_mesh
    from tailor_jax.tasks import get_task
    from tailor_jax.train import sft
    from tailor_jax.train.checkpoint import Checkpointer, TrainCheckpoint
    from tailor_jax.train.state import split_model

    cfg = load_config(sft.SFTConfig, config_path)
    cfg = dataclasses.replace(cfg, eval_samples=len(test), max_new_tokens=256)
    task = get_task("gf", **cfg.data.task_options)
    tokenizer = tok_lib.load_tokenizer(Path(cfg.run_dir) / "tokenizer")
    mesh = create_mesh(cfg.mesh)
    model = sft.build_model(cfg, tokenizer, mesh, cfg.mesh.axis_rules())
    graphdef, params, rest = split_model(model)
    with Checkpointer(Path(cfg.run_dir) / "checkpoints", cfg.checkpoint) as checkpointer:
        restored = checkpointer.restore(TrainCheckpoint(0, params))
    from flax import nnx

    model = nnx.merge(graphdef, restored.params, rest)
    from tailor_jax.eval.evaluator import evaluate_policy
    from tailor_jax.sampling import Sampler

    metrics = evaluate_policy(Sampler(model, pad_id=tok_lib.pad_id(tokenizer)), task, tokenizer, test,
                              prompt_style=cfg.data.prompt_style, think_prefill=cfg.data.think_prefill,
                              max_new_tokens=cfg.max_new_tokens)
    by_level = {k.rsplit("/", 1)[1]: v for k, v in metrics.items() if k.startswith("eval/acc/")}
    return {"step": restored.step, "acc": metrics["eval/acc"], "by_level": by_level}


if __name__ == "__main__":
    sys.exit(main())
