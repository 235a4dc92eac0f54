"""How well does a tiny from-scratch model learn GF(11) chains by SFT? Accuracy by kind and by
the strategy the model chose, in and beyond the training lengths.

    python benchmarks/gf_sft_probe.py --steps 1000 [--strategy mixed] [--out FILE.json]

Trains the quickstart's model (2 layers, hidden 128) on 2-5 step chains (20,000 problems,
`--strategy` traces) with `tailor_jax.train.sft`, then decodes held-out 2-5 and 6-9 step
problems greedily (none of them in the training pool) and prints exact-answer accuracy per
(kind, strategy the first trace line shows: `num` for a numeric walk, `map` for an affine map).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--strategy", default="mixed", choices=["forward", "backward", "mixed"])
    parser.add_argument("--num-train", type=int, default=20000)
    parser.add_argument("--num-test", type=int, default=200, help="held-out problems per length range")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from tailor_jax.config import config_from_dict
    from tailor_jax.data import tokenizer as tok_lib
    from tailor_jax.data.jsonl import write_jsonl
    from tailor_jax.sampling import Sampler
    from tailor_jax.tasks import get_task, problem_key
    from tailor_jax.train import sft
    from tailor_jax.train.state import merge_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gf_probe_"))
    shutil.rmtree(work / "run", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    options = {"p": 11, "steps": "2-5", "strategy": args.strategy}
    train = list(get_task("gf", **options).generate(args.num_train, seed=1))
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "eval.jsonl", train[:64])
    cfg = config_from_dict(sft.SFTConfig, {
        "run_dir": str(work / "run"),
        "data": {"task": "gf", "task_options": options, "train_file": str(work / "train.jsonl"),
                 "eval_file": str(work / "eval.jsonl"), "seq_len": 384},
        "tokenizer": {"vocab_size": 512},
        "model": {"preset": "tiny", "overrides": {"hidden_size": 128, "intermediate_size": 384, "num_layers": 2,
                                                  "num_heads": 4, "num_kv_heads": 2, "head_dim": 32}},
        "optimizer": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 20, "end_lr_ratio": 0.05, "weight_decay": 0.01},
        "checkpoint": {"every_steps": 10**6}, "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        "steps": args.steps, "batch_size": 16, "log_every": 50, "eval_batches": 2, "progress": False,
    })
    start = time.perf_counter()
    result = sft.train(cfg)
    train_seconds = time.perf_counter() - start
    model, tokenizer = merge_model(result.graphdef, result.state), result.tokenizer
    sampler = Sampler(model, pad_id=tok_lib.pad_id(tokenizer))
    seen = {problem_key(r) for r in train}
    report = {"steps": args.steps, "strategy": args.strategy, "train_seconds": round(train_seconds, 1),
              "final_loss": result.metrics.get("loss"), "accuracy": {}}
    for levels in ("2-5", "6-9"):
        task = get_task("gf", p=11, steps=levels)
        records = [r for r in task.generate(3 * args.num_test, seed=123) if problem_key(r) not in seen][: args.num_test]
        prompts = [task.prompt(r) for r in records]
        out = sampler.generate([tok_lib.encode_prompt(tokenizer, p) for p in prompts], max_new_tokens=240,
                               temperature=0.0, eos_token_ids=[tokenizer.eos_token_id])
        scores = collections.defaultdict(list)
        for record, tokens, finished in zip(records, out.tokens, out.finished):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            score = task.reward("binary", record, text, finished=bool(finished))
            first = text.split("<think>")[-1].split("\n")[0]
            chosen = "map" if ("*x+" in first or "*y+" in first) else "num"
            scores[f"{record['kind']}/{chosen}"].append(score)
            scores["all"].append(score)
        report["accuracy"][levels] = {k: {"acc": round(float(np.mean(v)), 3), "n": len(v)} for k, v in sorted(scores.items())}
    print(json.dumps(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
