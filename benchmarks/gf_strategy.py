"""Which walk does a GF(11) run's model choose, and how often is it right? Compares the SFT and
GRPO models of one `tailor-jax run` directory on held-out problems.

    python benchmarks/gf_strategy.py runs/quickstart [--per-level 200] [--levels 3 4 5] [--seed 777]

Draws `--per-level` problems per number of steps, drops those in the run's SFT pool
(`RUN_DIR/data/train.jsonl`), decodes them greedily with `RUN_DIR/sft/model` and
`RUN_DIR/grpo/model`, and prints per (kind, steps) the answers correct / completions that chose
each walk, read from the first trace line: `forward` starts at op (1), `backward` at the last op.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

WALKS = ("forward", "backward", "other")


def chosen_walk(completion: str) -> str:
    first = completion.split("<think>")[-1].split("\n")[0]
    match = re.match(r"\((\d+)\)", first)
    if match is None:
        return "other"
    return "forward" if match.group(1) == "1" else "backward"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-level", type=int, default=200)
    parser.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    args = parser.parse_args()

    from tailor_jax.data import tokenizer as tok_lib
    from tailor_jax.data.jsonl import read_jsonl
    from tailor_jax.eval.accuracy import level_records
    from tailor_jax.model import load_pretrained
    from tailor_jax.sampling import Sampler
    from tailor_jax.tasks import get_task, problem_key

    pool_file = args.run_dir / "data" / "train.jsonl"
    if not pool_file.is_file():
        sys.exit(f"error: {pool_file} is missing; give the directory of a finished `tailor-jax run` on the gf task")
    pool = {problem_key(r) for r in read_jsonl(pool_file)}
    records = level_records("gf", {"p": 11}, args.levels, args.per_level, args.seed, exclude=pool)
    task = get_task("gf", p=11)
    prompts = [task.prompt(r) for r in records]
    print(f"{len(records)} held-out problems (levels {args.levels}, not in the SFT pool)")
    for stage in ("sft", "grpo"):
        model_dir = args.run_dir / stage / "model"
        if not model_dir.is_dir():
            sys.exit(f"error: {model_dir} is missing; finish the run's {stage} stage first")
        model, tokenizer = load_pretrained(str(model_dir)), tok_lib.load_tokenizer(model_dir)
        sampler = Sampler(model, pad_id=tok_lib.pad_id(tokenizer))
        tally: collections.Counter = collections.Counter()
        for start in range(0, len(records), 128):
            block = range(start, min(start + 128, len(records)))
            out = sampler.generate([tok_lib.encode_prompt(tokenizer, prompts[i]) for i in block],
                                   max_new_tokens=args.max_new_tokens, eos_token_ids=[tokenizer.eos_token_id])
            for i, text in zip(block, tokenizer.batch_decode(out.tokens, skip_special_tokens=True)):
                completion = prompts[i].prefill + text
                correct = task.reward("binary", records[i], completion) == 1.0
                tally[(records[i]["kind"], records[i]["k"], chosen_walk(completion), correct)] += 1
        right = sum(v for key, v in tally.items() if key[3])
        print(f"\n{stage}: {right} / {len(records)} correct ({100 * right / len(records):.1f}%)")
        for kind in ("evaluation", "inversion"):
            for level in args.levels:
                cells = [f"{walk} {tally[(kind, level, walk, True)]} / {tally[(kind, level, walk, True)] + tally[(kind, level, walk, False)]}"
                         for walk in WALKS]
                print(f"  {kind:10s} k {level}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
