"""K&K sampling: the seeded uniform draws, the statement sampler, and how many distinct
problems a setting has."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.tasks.kk.logic import LEAF_KINDS, knight_masks, truth_table


# Consecutive draws without a new uniquely solvable problem before the generator gives up.
MAX_DRAWS_PER_RECORD = 1000
MAX_CHILD_DRAWS = 1000

# --- sampling ------------------------------------------------------------------------------
class Uniform:
    """Buffered uniform integers from one numpy Generator (one C call per 4096 draws)."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)
        self._buffer: list[float] = []
        self._next = 0

    def below(self, k: int) -> int:
        """Uniform integer in [0, k)."""
        if self._next == len(self._buffer):
            self._buffer = self._rng.random(4096).tolist()
            self._next = 0
        value = self._buffer[self._next]
        self._next += 1
        return int(value * k)

    def between(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)

    def sample(self, pool: Sequence, k: int) -> list:
        """k distinct items of `pool`, in random order."""
        remaining = list(pool)
        return [remaining.pop(self.below(len(remaining))) for _ in range(k)]


class StatementSampler:
    """The K&K statement sampler (die over 6 faces; see the module docstring)."""

    def __init__(self, uniform: Uniform, n_people: int, depth: int, width: int):
        self.uniform, self.n_people, self.depth, self.width = uniform, n_people, depth, width

    def leaf(self, speaker: int) -> tuple:
        while True:
            kind = LEAF_KINDS[self.uniform.below(2)]
            target = self.uniform.below(self.n_people)
            if not (kind == "lying" and target == speaker):
                return (kind, target)

    def statement(self, speaker: int, depth: int) -> tuple:
        face = self.uniform.below(6)
        if depth == 1 or face == 0:
            return self.leaf(speaker)
        if face == 1:
            return ("not", self.leaf(speaker))
        if face in (2, 3):
            count = self.uniform.between(2, self.width)
            return ("and" if face == 2 else "or", *self.children(speaker, depth - 1, count))
        return ("->" if face == 4 else "<=>", *self.children(speaker, depth - 1, 2))

    def children(self, speaker: int, depth: int, count: int) -> list[tuple]:
        chosen: list[tuple] = []
        for _ in range(MAX_CHILD_DRAWS):
            child = self.statement(speaker, depth)
            if child not in chosen:
                chosen.append(child)
                if len(chosen) == count:
                    return chosen
        raise TailorError(
            f"kk could not sample {count} distinct sub-statements for {self.n_people} people at depth {depth}; "
            "use a smaller width"
        )

    def problem(self) -> tuple[tuple, ...]:
        return tuple(self.statement(speaker, self.depth) for speaker in range(self.n_people))


# --- how many distinct problems a setting has ---------------------------------------------
def _statement_count(n_people: int, depth: int, width: int) -> int:
    """Distinct statements one speaker can be given by `StatementSampler` (children ordered, distinct)."""
    leaves = 2 * n_people - 1
    count = leaves
    for _ in range(depth - 1):
        ordered = [math.perm(count, w) for w in range(2, width + 1)]
        count = 2 * leaves + 2 * sum(ordered) + 2 * math.perm(count, 2)
    return count


def _statements(n_people: int, speaker: int, depth: int, width: int) -> list[tuple]:
    """Every statement `StatementSampler.statement(speaker, depth)` can return."""
    leaves = [(kind, t) for kind in LEAF_KINDS for t in range(n_people) if not (kind == "lying" and t == speaker)]
    if depth == 1:
        return leaves
    children = _statements(n_people, speaker, depth - 1, width)
    out = leaves + [("not", leaf) for leaf in leaves]
    for w in range(2, width + 1):
        out += [(op, *combo) for combo in itertools.permutations(children, w) for op in ("and", "or")]
    out += [(op, *combo) for combo in itertools.permutations(children, 2) for op in ("->", "<=>")]
    return out


@lru_cache(maxsize=64)
def distinct_problems(n_people: int, depth: int, width: int, max_statements: int = 5000) -> int | None:
    """The exact number of distinct uniquely solvable problems `generate` can draw for `n_people`
    people (statement tuples, one per speaker), or None when counting would take too long (more
    than `max_statements` statements per speaker, or a large search); such settings (depth >= 2
    and 4 or more people, or depth >= 3) have far more problems than any pool asks for. Counted over truth tables, one speaker at a time: the state is the set of
    assignments still consistent, and a speaker's statement keeps those where its truth equals
    the speaker being a knight."""
    if depth == 1:
        # Leaf statements only say "i is a knight/knave", i.e. k_speaker = k_i or = not k_i; flipping
        # every role keeps all of them true, so a consistent assignment is never the only one.
        return 0
    if _statement_count(n_people, depth, width) > max_statements:
        return None
    masks, full = knight_masks(n_people)
    states: dict[int, int] = {full: 1}
    for speaker in range(n_people):
        tables: dict[int, int] = {}
        for statement in _statements(n_people, speaker, depth, width):
            table = truth_table(statement, masks, full)
            tables[table] = tables.get(table, 0) + 1
        if len(states) * len(tables) > 300_000:
            return None
        following: dict[int, int] = {}
        for state, ways in states.items():
            for table, count in tables.items():
                kept = state & ~(table ^ masks[speaker]) & full
                if kept:
                    following[kept] = following.get(kept, 0) + ways * count
        states = following
    return sum(ways for state, ways in states.items() if state.bit_count() == 1)
