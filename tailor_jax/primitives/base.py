"""Reasoning primitives: named ways of thinking that render a verified trace for a problem.

A primitive's `render(record) -> str` writes the chain of thought (the text that goes inside
<think> ... </think>); the demonstration is `task.target(record, trace)`, which appends the
task's answer block. `check(record, trace) -> list[str]` lists every false intermediate claim
(empty: every step verified); the final answer is checked separately by the task verifier.
`description` is the natural-language instruction z used when a teacher LM generates traces
for the primitive; it is never part of an SFT example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

# Behaviour tags (Gandhi et al. 2025's four cognitive behaviours first, then ours).
TAGS = frozenset({
    "verification", "backtracking", "subgoal", "backward_chaining",
    "enumeration", "forward", "decomposition", "propagation", "hypothesis", "error_recovery", "symbolic",
})


@dataclasses.dataclass(frozen=True)
class Primitive:
    name: str
    task: str  # "kk" | "igsm" | "gf"
    description: str  # the instruction z (natural language)
    tags: frozenset[str]
    render: Callable[[dict], str]
    check: Callable[[dict, str], list[str]]
    source: str = "library"  # "library" | "composition" | "teacher"

    def __post_init__(self):
        unknown = set(self.tags) - TAGS
        if unknown:
            raise ValueError(f"primitive {self.name}: unknown tags {sorted(unknown)}")
