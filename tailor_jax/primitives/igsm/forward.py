"""forward_topological: the task's own solution (a random topological order)."""

from __future__ import annotations

from tailor_jax.primitives.igsm.common import Checker, Problem


# --- forward_topological -------------------------------------------------------------------
def render_forward(record: dict) -> str:
    return record["solution"]


def check_forward(record: dict, trace: str) -> list[str]:
    c = Checker(Problem.of(record))
    c.defines(trace)
    c.answered()
    return c.problems
