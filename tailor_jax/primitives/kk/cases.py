"""case_enumeration: all 2^n cases in order, each stopped at its first broken statement (a
break settled by a prefix of the roles rules out the whole block sharing that prefix)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tailor_jax.primitives.kk.common import (
    ROLE_WORDS, BOOL_WORDS, NAME, ROLE, TRUTH, role_word, truth_word, roles_tuple_text, parse_roles_tuple, Puzzle, Checker, numbered_lines,
)
from tailor_jax.tasks.kk import evaluate, solution_text


# --- case_enumeration --------------------------------------------------------------------
def _case_roles(case: int, n: int) -> list[bool]:
    """0-based case index -> roles; person 0 varies slowest and knight comes first."""
    return [not (case >> (n - 1 - i) & 1) for i in range(n)]


def _check_order(puzzle: Puzzle) -> list[int]:
    """Statements ordered by the last person (in case order) they involve: a broken statement
    found early is then decided by the shortest prefix, which rules out the largest block."""
    return sorted(range(puzzle.n), key=lambda i: (max(puzzle.involved[i]), i))


def _first_broken(puzzle: Puzzle, roles: Sequence[bool]) -> int | None:
    return next((i for i in _check_order(puzzle) if not puzzle.fits(i, roles)), None)


def render_case_enumeration(record: dict) -> str:
    puzzle = Puzzle.of(record)
    n, total = puzzle.n, 1 << puzzle.n
    lines = [f"People in order: {', '.join(puzzle.names)}. Try all {total} cases, knights first; "
             "stop a case at its first broken statement."]  # fmt: skip
    case, survivors = 0, []
    while case < total:
        roles = _case_roles(case, n)
        broken = _first_broken(puzzle, roles)
        if broken is None:
            survivors.append(case)
            lines.append(f"Case {case + 1} {roles_tuple_text(roles)}: all {n} statements fit.")
            case += 1
            continue
        # The longest prefix after which this case is the first of its block (only knights
        # follow) and that still settles the broken statement: that whole block fails alike.
        trailing_knights = next((k for k in range(n) if not roles[n - 1 - k]), n)
        needed = max(puzzle.involved[broken]) + 1
        prefix = max(needed, n - trailing_knights)
        shown = roles[:prefix] + [None] * (n - prefix)
        size = 1 << (n - prefix)
        label = f"Case {case + 1}" if size == 1 else f"Cases {case + 1}-{case + size}"
        value = evaluate(puzzle.statements[broken], shown)
        lines.append(
            f"{label} {roles_tuple_text(shown)}: {puzzle.names[broken]}'s statement is {truth_word(value)}, "
            f"but {puzzle.names[broken]} is a {role_word(roles[broken])}."
        )
        case += size
    if len(survivors) == 1:
        lines.append(f"Only case {survivors[0] + 1} is left: {solution_text(puzzle.names, _case_roles(survivors[0], n))}")
    return "\n".join(lines)


_CASE_BROKEN = re.compile(rf"Cases? (\d+)(?:-(\d+))? (\([a-z, ]+\)): {NAME}'s statement is {TRUTH}, but {NAME} is a {ROLE}\.")
_CASE_FITS = re.compile(r"Case (\d+) (\([a-z, ]+\)): all (\d+) statements fit\.")
_CASE_DONE = re.compile(r"Only case (\d+) is left: (.*)")


def check_case_enumeration(record: dict, trace: str) -> list[str]:
    puzzle = Puzzle.of(record)
    c = Checker(puzzle)
    n, total = puzzle.n, 1 << puzzle.n
    lines = numbered_lines(trace)
    header = render_case_enumeration(record).split("\n", 1)[0]
    if not lines or lines[0][1] != header:
        c.fail(1, "missing the case-enumeration header line")
    next_case, survivors, concluded = 1, [], False

    def block(line_no: int, first: int, last: int, shown_text: str) -> tuple[bool | None, ...] | None:
        shown = parse_roles_tuple(shown_text)
        if shown is None or len(shown) != n:
            c.fail(line_no, f"roles {shown_text} are not {n} of knight/knave/any")
            return None
        prefix = next((k for k, r in enumerate(shown) if r is None), n)
        if any(r is not None for r in shown[prefix:]):
            c.fail(line_no, "'any' may only end the roles")
            return None
        if first != next_case:
            c.fail(line_no, f"expected case {next_case} next, got case {first}")
        if last - first + 1 != 1 << (n - prefix):
            c.fail(line_no, f"cases {first}-{last} are not the {1 << (n - prefix)} cases of the stated roles")
        elif _case_roles(first - 1, n)[:prefix] != list(shown[:prefix]) or (first - 1) % (1 << (n - prefix)):
            c.fail(line_no, f"case {first} does not have the roles {shown_text}")
        return shown

    for line_no, line in lines[1:]:
        if concluded:
            c.fail(line_no, "text after the conclusion")
        elif m := _CASE_BROKEN.fullmatch(line):
            first = int(m[1])
            last = int(m[2]) if m[2] else first
            shown = block(line_no, first, last, m[3])
            next_case = last + 1
            speaker, subject = c.person(line_no, m[4]), c.person(line_no, m[6])
            if shown is None or speaker is None or subject is None:
                continue
            if subject != speaker:
                c.fail(line_no, "the role compared must be the speaker's")
            role = ROLE_WORDS[m[7]]
            c.role_claim(line_no, speaker, role, shown)
            c.value_claim(line_no, speaker, BOOL_WORDS[m[5]], shown)
            if BOOL_WORDS[m[5]] == role:
                c.fail(line_no, "the statement matches its speaker's role, so it does not break the case")
        elif m := _CASE_FITS.fullmatch(line):
            shown = block(line_no, int(m[1]), int(m[1]), m[2])
            next_case = int(m[1]) + 1
            if int(m[3]) != n:
                c.fail(line_no, f"there are {n} statements, not {m[3]}")
            if shown is None:
                continue
            bad = [puzzle.names[i] for i in range(n) if not puzzle.fits(i, shown)]
            if bad:
                c.fail(line_no, f"case {m[1]} breaks the statements of {', '.join(bad)}")
            survivors.append(int(m[1]))
        elif m := _CASE_DONE.fullmatch(line):
            concluded = True
            if survivors != [int(m[1])]:
                c.fail(line_no, f"case {m[1]} is not the single surviving case (survivors: {survivors})")
            if next_case != total + 1:
                c.fail(line_no, f"cases {next_case}-{total} were never checked")
            c.conclusion(line_no, m[2], _case_roles(int(m[1]) - 1, n) if 1 <= int(m[1]) <= total else None)
        else:
            c.fail(line_no, f"unrecognised line {line!r}")
    if not concluded:
        c.fail(len(lines), "no conclusion")
    return c.problems
