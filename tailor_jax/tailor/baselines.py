"""Baseline SFT sets of a given size, in the same `Example` form as the Tailor set.

- `rule_based` ("Standard-CoT"): the task's own canonical `solution_trace`, one per question.
- `four_star`: the four cognitive behaviours of Gandhi et al. 2025 -- verification,
  backtracking, subgoal setting, backward chaining. Question i shows behaviour i mod 4 through
  a library primitive tagged with it (cycling over those primitives).
- `redistill`: the correct solutions a trained policy (an HF-format directory with its
  tokenizer, e.g. a GRPO run's exported model) samples on the questions; one per question
  first, then more per question until the budget is met.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from tailor_jax.errors import TailorError
from tailor_jax.tailor.metrics import Example
from tailor_jax.tasks import Task

log = logging.getLogger(__name__)

BEHAVIOURS = ("verification", "backtracking", "subgoal", "backward_chaining")
BASELINES = ("rule_based", "four_star", "redistill")


def _check_budget(records: Sequence[dict], budget: int, name: str) -> None:
    if budget < 1:
        raise TailorError(f"{name}: budget must be >= 1, got {budget}")
    if len(records) < budget:
        raise TailorError(f"{name}: only {len(records)} questions for a budget of {budget}; generate more questions")


def rule_based(task: Task, records: Sequence[dict], budget: int) -> list[Example]:
    _check_budget(records, budget, "rule_based")
    return [Example(r, task.target(r), "solution_trace") for r in records[:budget]]


def four_star(task: Task, records: Sequence[dict], budget: int) -> list[Example]:
    from tailor_jax.primitives import get_library

    _check_budget(records, budget, "four_star")
    library = get_library(task.name)
    by_behaviour = {b: [p for p in library.values() if b in p.tags] for b in BEHAVIOURS}
    missing = [b for b, prims in by_behaviour.items() if not prims]
    if missing:
        log.warning("four_star: the %s library has no primitive tagged %s; those are skipped", task.name, missing)
    cycle = [b for b in BEHAVIOURS if by_behaviour[b]]
    if not cycle:
        raise TailorError(f"four_star: the {task.name} library has no primitive tagged with any of {BEHAVIOURS}")
    examples = []
    for i, record in enumerate(records[:budget]):
        prims = by_behaviour[cycle[i % len(cycle)]]
        primitive = prims[(i // len(cycle)) % len(prims)]
        examples.append(Example(record, task.target(record, primitive.render(record)), primitive.name))
    return examples


def redistill(
    task: Task,
    records: Sequence[dict],
    budget: int,
    policy_dir: str | Path,
    *,
    samples_per_question: int = 4,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    prompt_style: str = "plain",
    seed: int = 0,
    chunk: int = 32,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> list[Example]:
    """Up to `budget` verified-correct samples of the policy (fewer if it solves too little:
    logged). Questions are taken in order; after each chunk of them `on_progress(questions
    sampled, questions, questions solved)` (sampling thousands of prompts takes minutes to hours)."""
    from tailor_jax.eval.evaluator import score_completions
    from tailor_jax.tailor.teacher import LocalModel

    if budget < 1:
        raise TailorError(f"redistill: budget must be >= 1, got {budget}")
    policy = LocalModel.load(policy_dir)
    per_question: list[list[str]] = []
    for start in range(0, len(records), chunk):
        block = records[start : start + chunk]
        prompts = [task.prompt(r, style=prompt_style) for r in block]
        done = policy.complete(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               num_samples=samples_per_question, seed=seed + start)
        scores = score_completions(task, block, done)  # binary: 0 for a completion cut at max_new_tokens
        texts = done.texts
        for j in range(len(block)):
            correct = []
            for s in range(samples_per_question):
                completion = texts[j * samples_per_question + s]
                if scores[j, s] == 1.0 and completion not in correct:
                    correct.append(completion)
            per_question.append(correct)
        solved = sum(map(bool, per_question))
        if on_progress is not None:
            on_progress(len(per_question), len(records), solved)
        if solved >= budget:
            break
    examples: list[Example] = []
    for rank in range(samples_per_question):  # one per question first, then seconds, ...
        for record, correct in zip(records, per_question):
            if rank < len(correct) and len(examples) < budget:
                examples.append(Example(record, correct[rank], "redistill"))
    if len(examples) < budget:
        log.warning("redistill: the policy solved only %d samples for a budget of %d", len(examples), budget)
    return examples


def build_baseline(name: str, task: Task, records: Sequence[dict], budget: int, **options) -> list[Example]:
    if name == "rule_based":
        return rule_based(task, records, budget)
    if name == "four_star":
        return four_star(task, records, budget)
    if name == "redistill":
        if not options.get("policy_dir"):
            raise TailorError("redistill needs a trained policy: set baselines.policy (an HF-format model directory)")
        return redistill(task, records, budget, **options)
    raise TailorError(f"unknown baseline {name!r}; use one of {', '.join(BASELINES)}")
