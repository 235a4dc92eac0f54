"""Held-out problem sets per difficulty level (for the evaluator, `tailor_jax.eval.evaluator`).

Shared by the GRPO trainer's periodic evaluation, the run's eval stage and `tailor-jax eval`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import islice

from tailor_jax.tasks import get_task, problem_key, task_class


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
