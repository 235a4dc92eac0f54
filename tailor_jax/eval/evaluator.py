"""The one evaluator: prompt -> encode -> generate -> decode -> score, then per-level tables.

Every place that decodes a policy and scores what it wrote goes through here:

- `sample_completions` (encode, generate, decode; the prompt's prefill put back in front) and
  `score_completions` (a task reward per completion): the Tailor pipeline's analyse stage,
  redistill and the teacher (`tailor.teacher.LocalModel`), and GRPO's rollout, which keeps
  its own sampler calls (seeds, batches) and shares `decode_completions` / `score_completions`.
- `evaluate_records` (greedy correctness and length per problem, pass@k over sampled
  completions) -> `score_outcomes` (the result tables of `tailor-jax eval` and the run's eval
  stage) or `policy_metrics` (the `eval/acc/<task>/<level>` metrics of the SFT and GRPO
  trainers' periodic evaluation); `evaluate_policy` is the two together.

Pure core: `decode_completions` given a sampler output, `score_completions`, `score_outcomes`,
`policy_metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.tasks.prompt import Prompt


# (record, completion) -> the strategy (primitive) it follows, or None: `primitives.classify`,
# which sits above the evaluator, so callers pass it in
StrategyLabeller = Callable[[dict, str], "str | None"]


@dataclasses.dataclass(frozen=True)
class Completions:
    """Decoded completions of a list of prompts, `num_samples` per prompt: row j*k + s is sample s
    of prompt j. `decoded` is the model's text; `texts` puts the prompt's prefill (e.g. an opened
    think tag) back in front, which is the full assistant text a task reward scores."""

    prefills: list[str]  # one per prompt
    decoded: list[str]  # one per row
    finished: list[bool]  # one per row: ended on EOS (not cut at max_new_tokens)
    lengths: list[int]  # one per row, in tokens
    num_samples: int

    @property
    def texts(self) -> list[str]:
        return [self.prefills[row // self.num_samples] + text for row, text in enumerate(self.decoded)]

    @classmethod
    def concat(cls, parts: Sequence[Completions]) -> Completions:
        if not parts:
            raise ValueError("Completions.concat needs at least one part")
        if len({p.num_samples for p in parts}) > 1:
            raise ValueError("Completions.concat: the parts have different num_samples")
        return cls([s for p in parts for s in p.prefills], [s for p in parts for s in p.decoded],
                   [f for p in parts for f in p.finished], [n for p in parts for n in p.lengths], parts[0].num_samples)


def decode_completions(tokenizer, prompts: Sequence[Prompt], out, num_samples: int) -> Completions:
    """The decode half: a sampler output (rows grouped by prompt) as `Completions`."""
    return Completions(
        prefills=[p.prefill for p in prompts],
        decoded=tokenizer.batch_decode(out.tokens, skip_special_tokens=True),
        finished=[bool(f) for f in out.finished],
        lengths=[int(n) for n in out.lengths],
        num_samples=num_samples,
    )


def sample_completions(
    sampler, tokenizer, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float = 0.0,
    num_samples: int = 1, seed: int = 0, max_prompt_tokens: int | None = None,
) -> Completions:
    """Encode `prompts`, generate `num_samples` completions each in one sampler call (stopping at
    the tokenizer's EOS), decode. Prompts longer than `max_prompt_tokens` keep their last tokens."""
    ids = [tok_lib.encode_prompt(tokenizer, p) for p in prompts]
    if max_prompt_tokens is not None:
        ids = [x[-max_prompt_tokens:] for x in ids]
    out = sampler.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature, num_samples=num_samples,
                           eos_token_ids=[tokenizer.eos_token_id], seed=seed)
    return decode_completions(tokenizer, prompts, out, num_samples)


def score_completions(task, records: Sequence[dict], completions: Completions, reward: str = "binary") -> np.ndarray:
    """[len(records), num_samples] task rewards of the completions (record j's rows j*k ... j*k+k-1)."""
    k = completions.num_samples
    texts = completions.texts
    scores = np.zeros((len(records), k), np.float32)
    for row, text in enumerate(texts):
        scores[row // k, row % k] = task.reward(reward, records[row // k], text, finished=completions.finished[row])
    return scores


# ---------------------------------------------------------------------------------------
# Evaluation of a policy on held-out problems.
def evaluate_records(
    sampler, task, tokenizer, records: Sequence[dict], *, prompt_style: str = "plain", think_prefill: bool = False,
    max_new_tokens: int = 256, pass_k: int = 0, temperature: float = 1.0, seed: int = 0, chunk: int = 64,
    strategy_of: StrategyLabeller | None = None,
) -> list[dict]:
    """Per-problem outcomes: greedy correctness and length, plus pass@k over `pass_k` samples at
    `temperature` (seed `seed` + the chunk's first index). Outcome: {"level", "kind", "correct",
    "length", "truncated", "pass"} (truncated: the greedy completion was cut at `max_new_tokens`
    without an end token; pass None when pass_k is 0). With `strategy_of` (record, completion)
    -> name or None (`tailor_jax.primitives.classify`), also "strategy" of the greedy completion
    and, when pass_k, "sample_strategies" and "sample_correct" (one per sample)."""
    prompts = [task.prompt(r, style=prompt_style, think_prefill=think_prefill) for r in records]
    outcomes = []
    for start in range(0, len(records), chunk):
        block = slice(start, min(start + chunk, len(records)))
        block_records, block_prompts = records[block], prompts[block]
        greedy = sample_completions(sampler, tokenizer, block_prompts, max_new_tokens=max_new_tokens)
        correct = score_completions(task, block_records, greedy)[:, 0] > 0
        sampled, sample_scores = None, None
        if pass_k:
            sampled = sample_completions(sampler, tokenizer, block_prompts, max_new_tokens=max_new_tokens,
                                         temperature=temperature, num_samples=pass_k, seed=seed + start)
            sample_scores = score_completions(task, block_records, sampled) > 0
        for j, record in enumerate(block_records):
            outcome = {"level": task.difficulty(record), "kind": record.get("kind"), "correct": bool(correct[j]),
                       "length": int(greedy.lengths[j]), "truncated": not greedy.finished[j],
                       "pass": None if sample_scores is None else bool(sample_scores[j].any())}
            if strategy_of is not None:
                outcome["strategy"] = strategy_of(record, greedy.texts[j])
                if sampled is not None:
                    rows = sampled.texts[j * pass_k:(j + 1) * pass_k]
                    outcome["sample_strategies"] = [strategy_of(record, text) for text in rows]
                    outcome["sample_correct"] = [bool(c) for c in sample_scores[j]]
            outcomes.append(outcome)
    return outcomes


def mean_or_zero(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def score_outcomes(outcomes: Sequence[dict]) -> dict[str, Any]:
    """Aggregate per-problem outcomes into the evaluation result.

    Each outcome: {"level": int, "kind": str | None, "correct": bool (greedy), "length": int
    (tokens), "truncated": bool (greedy completion cut at max_new_tokens; optional), "pass":
    bool | None (any of k samples correct; None when pass@k is off)}.
    Optional: "strategy" (str | None, the greedy completion's), "sample_strategies" and
    "sample_correct" (lists, one per sample), from `evaluate_records(strategy_of=...)`.
    Result: acc, acc_by_level, acc_by_kind, acc_by_kind_level, pass_at_k (+ by level),
    mean_length (+ by level), truncated (+ by level: the share of greedy completions cut at
    max_new_tokens, which score as wrong), num_problems, num_by_level; with strategies,
    `strategies` (+ `strategies_by_kind`) of the greedy completions and `sampled_strategies` of
    the samples (`strategy_table`). Level keys are strings (JSON).
    """
    by_level: dict[int, list[dict]] = {}
    by_kind: dict[str, list[dict]] = {}
    for o in outcomes:
        by_level.setdefault(int(o["level"]), []).append(o)
        if o.get("kind") is not None:
            by_kind.setdefault(str(o["kind"]), []).append(o)
    levels = sorted(by_level)
    result: dict[str, Any] = {
        "num_problems": len(outcomes),
        "acc": mean_or_zero([float(o["correct"]) for o in outcomes]),
        "acc_by_level": {str(lv): mean_or_zero([float(o["correct"]) for o in by_level[lv]]) for lv in levels},
        "num_by_level": {str(lv): len(by_level[lv]) for lv in levels},
        "mean_length": mean_or_zero([o["length"] for o in outcomes]),
        "mean_length_by_level": {str(lv): mean_or_zero([o["length"] for o in by_level[lv]]) for lv in levels},
        "acc_by_kind": {k: mean_or_zero([float(o["correct"]) for o in v]) for k, v in sorted(by_kind.items())},
        "acc_by_kind_level": {
            k: {str(lv): mean_or_zero([float(o["correct"]) for o in v if int(o["level"]) == lv])
                for lv in sorted({int(o["level"]) for o in v})}
            for k, v in sorted(by_kind.items())
        },
    }
    if outcomes and all("truncated" in o for o in outcomes):
        result["truncated"] = mean_or_zero([float(o["truncated"]) for o in outcomes])
        result["truncated_by_level"] = {str(lv): mean_or_zero([float(o["truncated"]) for o in by_level[lv]])
                                        for lv in levels}
    if outcomes and all(o.get("pass") is not None for o in outcomes):
        result["pass_at_k"] = mean_or_zero([float(o["pass"]) for o in outcomes])
        result["pass_at_k_by_level"] = {str(lv): mean_or_zero([float(o["pass"]) for o in by_level[lv]]) for lv in levels}
    if outcomes and all("strategy" in o for o in outcomes):
        result["strategies"] = strategy_table([o["strategy"] for o in outcomes], [o["correct"] for o in outcomes])
        if by_kind:
            result["strategies_by_kind"] = {
                k: strategy_table([o["strategy"] for o in v], [o["correct"] for o in v]) for k, v in sorted(by_kind.items())
            }
    if outcomes and all("sample_strategies" in o for o in outcomes):
        result["sampled_strategies"] = strategy_table([s for o in outcomes for s in o["sample_strategies"]],
                                                      [c for o in outcomes for c in o["sample_correct"]])
    return result


def strategy_table(strategies: Sequence[str | None], correct: Sequence[bool]) -> dict[str, dict[str, float]]:
    """{strategy: {"share", "acc", "count"}}: the share of completions that follow each strategy
    and how many of those are right (None, no known strategy, counts as "other"), most common
    first."""
    groups: dict[str, list[bool]] = {}
    for strategy, ok in zip(strategies, correct, strict=True):
        groups.setdefault(strategy or "other", []).append(bool(ok))
    total = max(len(strategies), 1)
    return {name: {"share": len(oks) / total, "acc": mean_or_zero([float(x) for x in oks]), "count": len(oks)}
            for name, oks in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))}


def policy_metrics(outcomes: Sequence[dict], task_name: str, pass_k: int = 0) -> dict[str, float]:
    """The trainers' evaluation metrics: `eval/acc/<task>/<level>` and `eval/acc` (greedy),
    `eval/pass@<k>/<task>/<level>` when `pass_k`, `eval/mean_length` (greedy, in tokens),
    `eval/truncated` (share of greedy completions cut at max_new_tokens) and, when the outcomes
    carry strategy labels, `eval/strategy/<name>` (share of the greedy completions)."""
    result = score_outcomes(outcomes)
    metrics = {f"eval/acc/{task_name}/{level}": acc for level, acc in result["acc_by_level"].items()}
    metrics["eval/acc"] = result["acc"]
    for level, value in result.get("pass_at_k_by_level", {}).items() if pass_k else ():
        metrics[f"eval/pass@{pass_k}/{task_name}/{level}"] = value
    metrics["eval/mean_length"] = result["mean_length"]
    if "truncated" in result:
        metrics["eval/truncated"] = result["truncated"]
    for name, row in result.get("strategies", {}).items():
        metrics[f"eval/strategy/{name}"] = row["share"]
    return metrics


def evaluate_policy(sampler, task, tokenizer, records: Sequence[dict], *, pass_k: int = 0, **options) -> dict[str, float]:
    """`policy_metrics` of `evaluate_records` (options: prompt_style, think_prefill,
    max_new_tokens, temperature, seed, chunk)."""
    return policy_metrics(evaluate_records(sampler, task, tokenizer, records, pass_k=pass_k, **options), task.name, pass_k)
