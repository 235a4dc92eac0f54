"""Token lengths of a task's baseline demonstrations, measured the way an SFT run would see them:
a BPE of the run's vocabulary size trained on the demonstrations' prompt + completion texts (as
`train/sft.py` trains its tokenizer), then prompt and completion encoded as the SFT pipeline does.
Tells whether a study's `sft.data.seq_len` and `max_new_tokens` fit before it runs for hours.

    python benchmarks/demo_lengths.py igsm --options '{"preset": "med", "op": "1-4", "split": "train"}' \
        --num 8000 --vocab 1024 --out benchmarks/results/demo_lengths_igsm.json
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np

from result_file import write_result_file
from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.tailor.baselines import build_baseline
from tailor_jax.tasks import get_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("task")
    p.add_argument("--options", default="{}", help="task options as JSON")
    p.add_argument("--methods", default="rule_based,four_star")
    p.add_argument("--num", type=int, default=8000)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    task = get_task(args.task, **json.loads(args.options))
    records = list(itertools.islice(task.generate(args.num, seed=args.seed), args.num))
    results = []
    for method in args.methods.split(","):
        examples = build_baseline(method, task, records, len(records))
        pairs = [(task.prompt(e.record), e.completion) for e in examples]
        tokenizer = tok_lib.train_bpe_tokenizer([prompt.text + completion for prompt, completion in pairs], args.vocab)
        prompts = np.array([len(tok_lib.encode_prompt(tokenizer, prompt)) for prompt, _ in pairs])
        completions = np.array([len(tok_lib.encode_completion(tokenizer, c, prompt)) for prompt, c in pairs])
        row = {"system": method, "demonstrations": len(pairs), "max_prompt_plus_completion": int((prompts + completions).max()),
               "p99_prompt_plus_completion": float(np.percentile(prompts + completions, 99)),
               "max_completion": int(completions.max()), "p99_completion": float(np.percentile(completions, 99))}
        print(json.dumps(row))
        results.append(row)
    write_result_file(f"demo_lengths_{args.task}", results, matmul_peak_gflops=None, out=args.out,
                      task_options=json.loads(args.options), num=args.num, vocab=args.vocab, seed=args.seed)


if __name__ == "__main__":
    main()
