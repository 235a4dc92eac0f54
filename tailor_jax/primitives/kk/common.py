"""What every K&K primitive shares: role and truth words, the line patterns' pieces, the
puzzle as renderers and checkers see it, and the claim checker that replays a trace."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from tailor_jax.tasks.kk import (
    LEAF_KINDS, consistent_assignments, evaluate, truth_table, knight_masks, parse_roles, render_statement, statement_from_json,
)


ROLE_WORDS = {"knight": True, "knave": False}
BOOL_WORDS = {"true": True, "false": False}
NAME = r"([A-Z][A-Za-z]*)"
ROLE = r"(knight|knave)"
TRUTH = r"(true|false)"
QUOTED = r'"([^"]*)"'


def role_word(is_knight: bool) -> str:
    return "knight" if is_knight else "knave"


def truth_word(value: bool) -> str:
    return "true" if value else "false"


def roles_tuple_text(roles: Sequence[bool | None]) -> str:
    """'(knight, knave, any)'."""
    return "(" + ", ".join("any" if r is None else role_word(r) for r in roles) + ")"


def parse_roles_tuple(text: str) -> tuple[bool | None, ...] | None:
    words = [w.strip() for w in text.strip().removeprefix("(").removesuffix(")").split(",")]
    if not all(w in ("knight", "knave", "any") for w in words):
        return None
    return tuple(None if w == "any" else w == "knight" for w in words)


# --- the puzzle as the checkers and renderers see it --------------------------------------
@dataclass(frozen=True)
class Puzzle:
    names: tuple[str, ...]
    statements: tuple[tuple, ...]
    solution: tuple[bool, ...]

    @staticmethod
    def of(record: dict) -> "Puzzle":
        names = tuple(record["names"])
        statements = tuple(statement_from_json(s, len(names)) for s in record["statements"])
        return Puzzle(names, statements, tuple(bool(r) for r in record["solution"]))

    @property
    def n(self) -> int:
        return len(self.names)

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @cached_property
    def texts(self) -> tuple[str, ...]:
        return tuple(render_statement(s, self.names) for s in self.statements)

    @cached_property
    def involved(self) -> tuple[tuple[int, ...], ...]:
        """Per statement: its speaker and every person it mentions, in index order."""
        return tuple(tuple(sorted({i} | mentioned(s))) for i, s in enumerate(self.statements))

    @cached_property
    def consistent(self) -> int:
        return consistent_assignments(self.statements)

    @cached_property
    def tables(self) -> tuple[int, ...]:
        masks, full = knight_masks(self.n)
        return tuple(truth_table(s, masks, full) for s in self.statements)

    def region(self, roles: Sequence[bool | None]) -> int:
        """Bitmask of the full assignments that agree with the known roles."""
        masks, full = knight_masks(self.n)
        region = full
        for mask, role in zip(masks, roles):
            if role is not None:
                region &= mask if role else full ^ mask
        return region

    def extends_to_solution(self, roles: Sequence[bool | None]) -> bool:
        """Whether some assignment consistent with every statement agrees with `roles`."""
        return bool(self.region(roles) & self.consistent)

    def settled(self, speaker: int, roles: Sequence[bool | None]) -> bool | None:
        """The statement's value if it is the same for every completion of `roles`, else None."""
        region = self.region(roles)
        covered = self.tables[speaker] & region
        return True if covered == region else (False if covered == 0 else None)

    def fits(self, speaker: int, roles: Sequence[bool | None]) -> bool | None:
        """Whether the speaker's role matches the truth of their statement (None: not settled)."""
        value = evaluate(self.statements[speaker], roles)
        if value is None or roles[speaker] is None:
            return None
        return value == roles[speaker]

    def local_options(self, speaker: int, roles: Sequence[bool | None]) -> list[dict[int, bool]]:
        """Every way to fill the unknown people of one statement so that it fits the speaker."""
        unknown = [p for p in self.involved[speaker] if roles[p] is None]
        options = []
        for combo in itertools.product((True, False), repeat=len(unknown)):
            trial = list(roles)
            for p, r in zip(unknown, combo):
                trial[p] = r
            if self.fits(speaker, trial):
                options.append(dict(zip(unknown, combo)))
        return options


def mentioned(statement: tuple) -> set[int]:
    if statement[0] in LEAF_KINDS:
        return {statement[1]}
    return set().union(*(mentioned(arg) for arg in statement[1:]))


class Checker:
    """Collects problems while a trace is replayed, with small shared claim checks."""

    def __init__(self, puzzle: Puzzle):
        self.puzzle = puzzle
        self.problems: list[str] = []

    def fail(self, line_no: int, message: str) -> None:
        self.problems.append(f"line {line_no}: {message}")

    def person(self, line_no: int, name: str) -> int | None:
        if name not in self.puzzle.index:
            self.fail(line_no, f"{name!r} is not one of the people")
            return None
        return self.puzzle.index[name]

    def statement_of(self, line_no: int, speaker: int, text: str) -> bool:
        if text != self.puzzle.texts[speaker]:
            self.fail(line_no, f"quoted statement {text!r} is not {self.puzzle.names[speaker]}'s statement")
            return False
        return True

    def value_claim(self, line_no: int, speaker: int, claimed: bool, roles: Sequence[bool | None]) -> None:
        value = self.puzzle.settled(speaker, roles)
        name = self.puzzle.names[speaker]
        if value is None:
            self.fail(line_no, f"{name}'s statement is not yet settled by the roles known here")
        elif value != claimed:
            self.fail(line_no, f"{name}'s statement is {truth_word(value)} here, not {truth_word(claimed)}")

    def role_claim(self, line_no: int, person: int, claimed: bool, roles: Sequence[bool | None]) -> None:
        if roles[person] != claimed:
            known = "unknown" if roles[person] is None else f"a {role_word(roles[person])}"
            self.fail(line_no, f"{self.puzzle.names[person]} is {known} here, not a {role_word(claimed)}")

    def conclusion(self, line_no: int, text: str, roles: Sequence[bool | None] | None = None) -> None:
        """A final 'A is a knight, B is a knave, ...' claim: those roles fit every statement
        (and equal `roles`, the roles the trace has established, when given)."""
        stated = parse_roles(text, self.puzzle.names)
        if stated is None:
            self.fail(line_no, "the conclusion does not name every person's role exactly once")
            return
        if roles is not None and list(roles) != stated:
            self.fail(line_no, "the conclusion differs from the roles established in the trace")
        bad = [self.puzzle.names[i] for i in range(self.puzzle.n) if not self.puzzle.fits(i, stated)]
        if bad:
            self.fail(line_no, f"the concluded roles contradict the statements of {', '.join(bad)}")


def numbered_lines(trace: str) -> list[tuple[int, str]]:
    return [(k, line) for k, line in enumerate(trace.split("\n"), 1)]
