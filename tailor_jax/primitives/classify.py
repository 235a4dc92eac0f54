"""Which reasoning strategy a model's completion follows: the primitive whose rendered trace
for the same problem it resembles most.

Select and Improve's "select" claim is that RL picks, per problem, one of the strategies its SFT
data demonstrated. Accuracy alone cannot show that; the share of each strategy among the
policy's outputs before and after RL can. The run's eval stage and `tailor-jax eval` pass
`task_strategy_classifier(task)` to the evaluator (`tailor_jax.eval.evaluate.evaluate_model`),
which labels every completion with it.

The match is structural, so a completion with a wrong value in it is still recognised:
- the trace (the text inside <think> ... </think>, or all of it when the tag is missing) is cut
  into units: lines, and sentences or clauses inside a line (after ". ", "; " or ": "), since
  iGSM's and KK's traces put several steps on one line;
- each unit is reduced to its shape: every number and every word of one or two letters (GF's
  value symbols, iGSM's variable names, short words alike on both sides) becomes "_";
- a candidate's score is the number of leading units whose shapes equal the completion's; the
  longest shared prefix wins, ties go to the candidate whose length (in units) is closest to the
  completion's, then to the earlier candidate. No shared first unit: None (no known strategy).

Candidates: the task's primitive library in its order, then its compositions (a primitive
followed by the verification pass), then the task's own rule-based trace as `rule_based` (on GF
it renders the same text as `forward`, which therefore takes it). Primitives a teacher model
wrote (`source: teacher`) are not candidates: their completions count as None.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from tailor_jax.primitives import LIBRARY_MODULES, compositions, get_library
from tailor_jax.tasks.prompt import THINK_CLOSE, THINK_OPEN

RULE_BASED = "rule_based"
_UNIT_SPLIT = re.compile(r"\n|(?<=[.;:])\s+")
_SHORT_TOKEN = re.compile(r"\b[A-Za-z]{1,2}\b|\d+")


def trace_text(completion: str) -> str:
    """The chain of thought of a completion: what lies between <think> and </think> (to the end
    when the close tag is missing), or the whole text when there is no <think>."""
    start = completion.find(THINK_OPEN)
    if start < 0:
        return completion
    body = completion[start + len(THINK_OPEN):]
    end = body.find(THINK_CLOSE)
    return body if end < 0 else body[:end]


def shapes(trace: str) -> list[str]:
    """The trace's units (lines, and sentences or clauses within a line) as shapes: numbers and
    words of one or two letters replaced by "_", spaces collapsed; empty units dropped."""
    units = (u.strip() for u in _UNIT_SPLIT.split(trace))
    return [" ".join(_SHORT_TOKEN.sub("_", u).split()) for u in units if u]


def _shared_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reference_shapes(record: dict, renderers: Mapping[str, Callable[[dict], str]]) -> dict[str, list[str]]:
    """Each renderer's trace for `record` as shapes; a renderer that fails on the record (a
    primitive that does not apply to it) is left out."""
    references = {}
    for name, render in renderers.items():
        try:
            references[name] = shapes(render(record))
        except Exception:  # noqa: BLE001
            continue
    return references


def closest_in(completion: str, references: Mapping[str, list[str]]) -> str | None:
    """The name of the reference `completion` follows (module docstring), or None when none
    shares its first unit."""
    target = shapes(trace_text(completion))
    best, best_key = None, (0, 0)
    for name, reference in references.items():
        key = (_shared_prefix(target, reference), -abs(len(reference) - len(target)))
        if key[0] > 0 and key > best_key:
            best, best_key = name, key
    return best


def closest_strategy(record: dict, completion: str, renderers: Mapping[str, Callable[[dict], str]]) -> str | None:
    """The name of the renderer whose trace for `record` `completion` follows, or None."""
    return closest_in(completion, reference_shapes(record, renderers))


def strategy_renderers(task) -> dict[str, Callable[[dict], str]]:
    """The candidates for `task` (a Task instance), in tie-break order: library, compositions,
    then the task's own trace as `rule_based`."""
    renderers = {name: p.render for name, p in get_library(task.name).items()}
    renderers.update({name: p.render for name, p in compositions(task.name).items()})
    renderers[RULE_BASED] = task.solution_trace
    return renderers


def strategy_classifier(task) -> Callable[[dict, str], str | None]:
    """`(record, completion) -> strategy name or None` for `task` (see `closest_strategy`)."""
    renderers = strategy_renderers(task)
    last: list = [None, {}]  # the record labelled last and its references: the evaluator labels a
    # record's greedy completion and its pass@k samples one after another, so each renders once

    def label(record: dict, completion: str) -> str | None:
        if last[0] is not record:
            last[:] = [record, reference_shapes(record, renderers)]
        return closest_in(completion, last[1])

    return label


def task_strategy_classifier(task) -> Callable[[dict, str], str | None] | None:
    """`strategy_classifier(task)`, or None for a task without a primitive library."""
    return strategy_classifier(task) if task.name in LIBRARY_MODULES else None
