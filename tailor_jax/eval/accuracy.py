"""Exact-answer accuracy of a policy on task records, per difficulty level.

Shared by the SFT and GRPO trainers' periodic evaluation and by `tailor-jax eval`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import islice

import numpy as np

from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.tasks import TASK_MODULES, Task, get_task, problem_key, task_class

# Each task's level option, read from the task registry; kept only for train/grpo_trainer's
# "known task" check (other branch): new code asks `task_class(name).level_option`.
LEVEL_OPTION = {name: task_class(name).level_option for name in TASK_MODULES}


def level_records(
    task_name: str, options: dict, levels: Sequence[int], per_level: int, seed: int,
    exclude: Collection[str] = frozenset(),
) -> list[dict]:
    """`per_level` problems at each difficulty level, deterministic in `seed`, none of whose
    `problem_key` is in `exclude` (from twice as many candidates; a level may come out short)."""
    records = []
    candidates = 2 * per_level if exclude else per_level
    for level in levels:
        task = get_task(task_name, **{**options, task_class(task_name).level_option: int(level)})
        fresh = (r for r in islice(task.generate(candidates, seed + 7919 * int(level)), candidates)
                 if problem_key(r) not in exclude)
        records.extend(islice(fresh, per_level))
    return records


def answer_accuracy(
    sampler,
    task: Task,
    tokenizer,
    records: Sequence[dict],
    *,
    prompt_style: str = "plain",
    think_prefill: bool = False,
    max_new_tokens: int = 256,
    num_samples: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
    chunk: int = 64,
) -> dict[str, float]:
    """Decode `records` with `sampler` (a `tailor_jax.sampling.Sampler` holding the policy).

    Metrics: `eval/acc/<task>/<level>` and `eval/acc` (mean binary reward of the first sample),
    `eval/pass@<k>/<task>/<level>` when num_samples > 1, `eval/mean_length` (tokens).
    """
    prompts = [task.prompt(r, style=prompt_style, think_prefill=think_prefill) for r in records]
    first: dict[int, list[float]] = {}
    any_correct: dict[int, list[float]] = {}
    lengths: list[int] = []
    for start in range(0, len(records), chunk):
        block = range(start, min(start + chunk, len(records)))
        out = sampler.generate(
            [tok_lib.encode_prompt(tokenizer, prompts[i]) for i in block],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            num_samples=num_samples,
            eos_token_ids=[tokenizer.eos_token_id],
            seed=seed + start,
        )
        texts = tokenizer.batch_decode(out.tokens, skip_special_tokens=True)
        for j, i in enumerate(block):
            level = task.difficulty(records[i])
            scores = [
                task.reward("binary", records[i], prompts[i].prefill + texts[j * num_samples + s],
                            finished=bool(out.finished[j * num_samples + s]))
                for s in range(num_samples)
            ]
            first.setdefault(level, []).append(scores[0])
            any_correct.setdefault(level, []).append(max(scores))
        lengths.extend(out.lengths)
    metrics = {f"eval/acc/{task.name}/{level}": float(np.mean(v)) for level, v in sorted(first.items())}
    metrics["eval/acc"] = float(np.mean([s for v in first.values() for s in v])) if first else 0.0
    if num_samples > 1:
        for level, v in sorted(any_correct.items()):
            metrics[f"eval/pass@{num_samples}/{task.name}/{level}"] = float(np.mean(v))
    metrics["eval/mean_length"] = float(np.mean(lengths)) if lengths else 0.0
    return metrics
