"""The evaluator's numbers at an older commit against this tree: every place that decodes and
scores (SFT and GRPO periodic eval, `evaluate_records` / `score_outcomes` of the eval stage and
`tailor-jax eval`, redistill, the Tailor analyse stage, GRPO's rollout rewards) on one trained
model, written to a JSON file by whichever tree is on PYTHONPATH; `--compare` then checks that
two such files agree exactly.

    git archive OLD_COMMIT tailor_jax | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python benchmarks/evaluator_ab.py --model RUN/sft/model --records RUN/eval/records.jsonl --out /tmp/old.json
    PYTHONPATH=$PWD   python benchmarks/evaluator_ab.py --model RUN/sft/model --records RUN/eval/records.jsonl --out /tmp/new.json
    python benchmarks/evaluator_ab.py --compare /tmp/old.json /tmp/new.json

The older API (before issue 23: `eval.accuracy.answer_accuracy`, `train.sft.answer_accuracy`,
`eval.evaluate.evaluate_records`) is detected and called where the tree has it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path


def measure(model_dir: str, records_file: str) -> dict:
    import tailor_jax
    from tailor_jax.config import config_from_dict
    from tailor_jax.data import tokenizer as tok_lib
    from tailor_jax.data.jsonl import read_jsonl, write_jsonl
    from tailor_jax.eval import accuracy
    from tailor_jax.model.hf_io import load_pretrained
    from tailor_jax.sampling import Sampler
    from tailor_jax.tasks import get_task

    try:  # after issue 23: the Tailor pipeline in tailor/, GRPO as the train/grpo/ package
        from tailor_jax.tailor import baselines
        from tailor_jax.tailor import pipeline as tailor_pipeline
        from tailor_jax.train import grpo as gt
    except ImportError:  # the tree before
        from tailor_jax.primitives import baselines
        from tailor_jax.primitives import pipeline as tailor_pipeline
        from tailor_jax.train import grpo_trainer as gt

    records = list(read_jsonl(records_file))
    per_level = {}
    for r in records:
        per_level.setdefault(r.get("k", r.get("people", r.get("op"))), []).append(r)
    records = [r for level in sorted(per_level) for r in per_level[level][:24]]
    task = get_task(records[0]["task"], **({"p": records[0]["p"]} if "p" in records[0] else {}))
    tokenizer = tok_lib.load_tokenizer(model_dir)
    model = load_pretrained(model_dir)
    sampler = Sampler(model, pad_id=tok_lib.pad_id(tokenizer))
    out: dict = {"tree": tailor_jax.__file__, "num_records": len(records)}
    if hasattr(accuracy, "answer_accuracy"):  # before issue 23
        from tailor_jax.eval.evaluate import evaluate_records, score_outcomes
        from tailor_jax.train import sft

        out["grpo_eval"] = accuracy.answer_accuracy(sampler, task, tokenizer, records, max_new_tokens=96, chunk=16)
        cfg = types.SimpleNamespace(eval_samples=40, max_new_tokens=96,
                                    data=types.SimpleNamespace(prompt_style="plain", think_prefill=False))
        out["sft_eval"] = sft.answer_accuracy(model, records, cfg, task, tokenizer)
    else:
        from tailor_jax.eval.evaluator import evaluate_policy, evaluate_records, score_outcomes

        out["grpo_eval"] = evaluate_policy(sampler, task, tokenizer, records, max_new_tokens=96, chunk=16)
        out["sft_eval"] = evaluate_policy(Sampler(model, pad_id=tok_lib.pad_id(tokenizer)), task, tokenizer, records[:40],
                                          max_new_tokens=96)
    out["outcomes"] = evaluate_records(sampler, task, tokenizer, records, max_new_tokens=96, pass_k=3, temperature=1.0,
                                       seed=2, chunk=32)
    out["result"] = score_outcomes(out["outcomes"])
    out["redistill"] = [[records.index(e.record), e.completion] for e in
                        baselines.redistill(task, records, 30, model_dir, samples_per_question=4, max_new_tokens=96, chunk=16)]
    with tempfile.TemporaryDirectory() as scratch:
        cfg = config_from_dict(tailor_pipeline.TailorConfig, {
            "run_dir": scratch, "task": task.name, "task_options": {"p": getattr(task, "p", 11)}, "num_questions": 24,
            "budget": 8, "student": model_dir,
            "analyse": {"num_questions": 24, "samples_per_question": 3, "max_new_tokens": 96, "temperature": 1.0}})
        write_jsonl(Path(scratch) / "questions.jsonl", records[::3][:24])
        analysis = tailor_pipeline.analyse(cfg)
        out["analyse"] = {"accuracy": analysis.accuracy, "by_level": analysis.accuracy_by_level,
                          "failures": analysis.failures,
                          "samples": list(read_jsonl(Path(scratch) / "analyse" / "samples.jsonl"))}
    for calls in (0, 16):  # one sampler call per round, and two
        grpo = config_from_dict(gt.GRPOConfig, {
            "run_dir": "unused", "init": model_dir, "task": task.name, "task_options": {"p": getattr(task, "p", 11), "steps": 3},
            "rewards": {"binary": 1.0, "logic_rl": 0.5}, "think_prefill": True,
            "rollout": {"prompts_per_step": 8, "num_generations": 4, "max_new_tokens": 64, "generation_batch_size": calls}})
        rollout = gt.sample_round(grpo, sampler, tokenizer, gt.step_records(grpo, 1, 0, None), 1, 0)
        out[f"rollout_{calls}"] = {"tokens": rollout.tokens.tolist(), "lengths": rollout.lengths.tolist(),
                                   "finished": rollout.finished.tolist(), "rewards": rollout.rewards.tolist(),
                                   "components": {k: v.tolist() for k, v in rollout.components.items()}}
    return out


def compare(a: dict, b: dict) -> dict[str, str]:
    verdict = {}
    for key in sorted(set(a) | set(b)):
        if key == "tree":
            continue
        if key == "sft_eval":  # the shared evaluator adds eval/mean_length to SFT's metrics
            shared = set(a[key]) & set(b[key])
            same = all(a[key][k] == b[key][k] for k in shared)
            verdict[key] = ("equal" if same else "DIFFERENT") + f" (keys only in one: {sorted(set(a[key]) ^ set(b[key]))})"
        else:
            verdict[key] = "equal" if a.get(key) == b.get(key) else "DIFFERENT"
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Hugging Face-format model directory with its tokenizer")
    parser.add_argument("--records", help="JSONL of held-out task records (e.g. RUN/eval/records.jsonl)")
    parser.add_argument("--out", help="where to write the measurements (JSON)")
    parser.add_argument("--compare", nargs=2, metavar="JSON", help="two measurement files to compare")
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        verdict = compare(a, b)
        print(json.dumps({"a": a["tree"], "b": b["tree"], "verdict": verdict,
                          "acc": [a["result"]["acc"], b["result"]["acc"]],
                          "pass_at_k": [a["result"].get("pass_at_k"), b["result"].get("pass_at_k")]}, indent=2))
        return 0 if all(v.startswith("equal") for v in verdict.values()) else 1
    if not (args.model and args.records and args.out):
        parser.error("give --model, --records and --out, or --compare A B")
    Path(args.out).write_text(json.dumps(measure(args.model, args.records), default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
