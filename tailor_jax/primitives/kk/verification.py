"""Verification passes: answer_first_verify (state the answer, then check every statement)
and the final check appended by `with_verification` and the compositions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tailor_jax.primitives.base import Primitive
from tailor_jax.primitives.kk.common import (
    ROLE_WORDS, BOOL_WORDS, NAME, ROLE, TRUTH, role_word, truth_word, Puzzle, Checker, numbered_lines,
)
from tailor_jax.tasks.kk import evaluate, parse_roles, solution_text


# --- verification passes (answer_first_verify and with_verification) ----------------------
@dataclass(frozen=True)
class VerifyStyle:
    opening: str  # the roles as solution text follow
    line: str  # format with a, r, s, v
    closing: str


ANSWER_FIRST_STYLE = VerifyStyle(
    opening="Hypothesis:",
    line='{a} is a {r} and says "{s}", which is {v}: fits.',
    closing="Every statement fits, so the hypothesis is the answer.",
)
FINAL_CHECK_STYLE = VerifyStyle(
    opening="Final check of the answer:",
    line='Check {a} ({r}): "{s}" is {v}. OK.',
    closing="All statements agree with the answer.",
)


def _verify_pattern(style: VerifyStyle) -> re.Pattern:
    parts = re.split(r"(\{[arsv]\})", style.line)
    groups = {"{a}": NAME, "{r}": ROLE, "{s}": r'([^"]*)', "{v}": TRUTH}
    return re.compile("".join(groups.get(part, re.escape(part)) for part in parts))


def verification_lines(puzzle: Puzzle, roles: Sequence[bool], style: VerifyStyle) -> list[str]:
    lines = [f"{style.opening} {solution_text(puzzle.names, roles)}"]
    for i in range(puzzle.n):
        value = evaluate(puzzle.statements[i], roles)
        lines.append(style.line.format(a=puzzle.names[i], r=role_word(roles[i]), s=puzzle.texts[i], v=truth_word(value)))
    lines.append(style.closing)
    return lines


def check_verification(c: Checker, lines: list[tuple[int, str]], style: VerifyStyle) -> None:
    puzzle = c.puzzle
    if not lines or not lines[0][1].startswith(style.opening + " "):
        c.fail(lines[0][0] if lines else 0, f"the verification does not open with {style.opening!r}")
        return
    start_no = lines[0][0]
    roles = parse_roles(lines[0][1][len(style.opening) + 1 :], puzzle.names)
    if roles is None:
        c.fail(start_no, "the verified roles do not name every person exactly once")
        return
    pattern = _verify_pattern(style)
    seen: list[int] = []
    closed = False
    for line_no, line in lines[1:]:
        if closed:
            c.fail(line_no, "text after the verification")
        elif m := pattern.fullmatch(line):
            speaker = c.person(line_no, m[1])
            if speaker is None or not c.statement_of(line_no, speaker, m[3]):
                continue
            seen.append(speaker)
            c.role_claim(line_no, speaker, ROLE_WORDS[m[2]], roles)
            c.value_claim(line_no, speaker, BOOL_WORDS[m[4]], roles)
            if BOOL_WORDS[m[4]] != ROLE_WORDS[m[2]]:
                c.fail(line_no, f"{m[1]}'s statement does not fit {m[1]}'s role, yet the check passes it")
        elif line == style.closing:
            closed = True
            if sorted(seen) != list(range(puzzle.n)):
                c.fail(line_no, "not every statement was checked exactly once")
            c.conclusion(start_no, lines[0][1][len(style.opening) + 1 :])
        else:
            c.fail(line_no, f"unrecognised line {line!r}")
    if not closed:
        c.fail(lines[-1][0], "the verification has no closing line")


def render_answer_first(record: dict) -> str:
    puzzle = Puzzle.of(record)
    return "\n".join(verification_lines(puzzle, puzzle.solution, ANSWER_FIRST_STYLE))


def check_answer_first(record: dict, trace: str) -> list[str]:
    c = Checker(Puzzle.of(record))
    check_verification(c, numbered_lines(trace), ANSWER_FIRST_STYLE)
    return c.problems


def render_final_check(record: dict) -> str:
    puzzle = Puzzle.of(record)
    return "\n".join(verification_lines(puzzle, puzzle.solution, FINAL_CHECK_STYLE))


def check_final_check(record: dict, trace: str) -> list[str]:
    """Every statement checked once against roles that fit them all (the unique answer)."""
    c = Checker(Puzzle.of(record))
    check_verification(c, numbered_lines(trace), FINAL_CHECK_STYLE)
    return c.problems


def with_verification(base: Primitive, name: str | None = None) -> Primitive:
    """`base`'s trace followed by an explicit check of every statement under the answer."""

    def render(record: dict) -> str:
        puzzle = Puzzle.of(record)
        return base.render(record) + "\n" + "\n".join(verification_lines(puzzle, puzzle.solution, FINAL_CHECK_STYLE))

    def check(record: dict, trace: str) -> list[str]:
        c = Checker(Puzzle.of(record))
        lines = trace.split("\n")
        starts = [k for k, line in enumerate(lines) if line.startswith(FINAL_CHECK_STYLE.opening + " ")]
        if not starts:
            return ["no final verification pass"]
        head = "\n".join(lines[: starts[-1]])
        problems = [f"{base.name}: {p}" for p in base.check(record, head)]
        check_verification(c, numbered_lines(trace)[starts[-1] :], FINAL_CHECK_STYLE)
        verified = parse_roles(lines[starts[-1]][len(FINAL_CHECK_STYLE.opening) + 1 :], c.puzzle.names)
        if verified is not None and verified != list(c.puzzle.solution):
            c.fail(starts[-1] + 1, "the verified roles are not the answer")
        return problems + c.problems

    return Primitive(
        name=name or f"{base.name}_then_verify",
        task="kk",
        description=base.description + " Then check every statement once more against the final roles.",
        tags=base.tags | {"verification"},
        render=render,
        check=check,
        source="library" if name else "composition",
    )
