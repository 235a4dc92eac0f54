"""assume_refute_dfs: the task's own depth-first assume-and-refute trace, and its checker."""

from __future__ import annotations

import re

from tailor_jax.primitives.kk.common import (
    ROLE_WORDS, BOOL_WORDS, NAME, ROLE, TRUTH, QUOTED, role_word, Puzzle, Checker, numbered_lines,
)
from tailor_jax.tasks.kk import KnightsAndKnaves


# --- assume_refute_dfs: the task's own trace ---------------------------------------------
_TASK = KnightsAndKnaves()


def render_dfs(record: dict) -> str:
    return _TASK.solution_trace(record)


_DFS_ASSUME = re.compile(rf"Assume {NAME} is a {ROLE}\.")
_DFS_CLAIM = re.compile(
    rf"{NAME}'s statement {QUOTED} is then {TRUTH}, (?:(consistent) with {NAME} being|but {NAME} is) a {ROLE}(: contradiction)?\."
)
_DFS_REFUTE = re.compile(rf"So {NAME} cannot be a {ROLE}\.")
_DFS_NEITHER = re.compile(rf"Neither role works for {NAME}, so {NAME} cannot be a {ROLE}\.")
_DFS_DONE = re.compile(r"All (\d+) statements are consistent with these roles: (.*)")


def check_dfs(record: dict, trace: str) -> list[str]:
    puzzle = Puzzle.of(record)
    c = Checker(puzzle)
    header = render_dfs(record).split("\n", 1)[0]
    lines = numbered_lines(trace)
    if not lines or lines[0][1] != header:
        c.fail(1, "missing the assume-and-refute header line")
    # Assumption frames: [person, role, contradicted, {child: refuted roles}, statements found consistent].
    stack: list[list] = []
    concluded = False

    def roles() -> list[bool | None]:
        out: list[bool | None] = [None] * puzzle.n
        for person, role, *_ in stack:
            out[person] = role
        return out

    def pop_refuted(line_no: int, person: int, role: bool, need_contradiction: bool) -> None:
        if not stack or stack[-1][0] != person or stack[-1][1] != role:
            c.fail(line_no, f"refutes {puzzle.names[person]} as a {role_word(role)}, which is not the current assumption")
            return
        if need_contradiction and not stack[-1][2]:
            c.fail(line_no, f"refutes {puzzle.names[person]} as a {role_word(role)} without a contradiction")
        if puzzle.extends_to_solution(roles()):
            c.fail(line_no, f"{puzzle.names[person]} can be a {role_word(role)} under the earlier assumptions")
        stack.pop()
        if stack:
            stack[-1][3].setdefault(person, set()).add(role)

    for line_no, line in lines[1:]:
        if concluded:
            c.fail(line_no, "text after the conclusion")
        elif m := _DFS_ASSUME.fullmatch(line):
            person = c.person(line_no, m[1])
            if person is None:
                continue
            if any(frame[0] == person for frame in stack):
                c.fail(line_no, f"assumes a role for {m[1]} again before refuting the current assumption")
                while any(frame[0] == person for frame in stack):
                    stack.pop()
            stack.append([person, ROLE_WORDS[m[2]], False, {}, set()])
        elif m := _DFS_CLAIM.fullmatch(line):
            speaker, subject = c.person(line_no, m[1]), c.person(line_no, m[5] or m[6])
            if speaker is None or subject is None or not c.statement_of(line_no, speaker, m[2]):
                continue
            if subject != speaker:
                c.fail(line_no, "the role compared must be the speaker's")
            now, claimed, role = roles(), BOOL_WORDS[m[3]], ROLE_WORDS[m[7]]
            c.role_claim(line_no, speaker, role, now)
            c.value_claim(line_no, speaker, claimed, now)
            contradiction = bool(m[8])
            if contradiction != (claimed != role) or contradiction == bool(m[4]):
                c.fail(line_no, "calls a match a contradiction or a contradiction consistent")
            if contradiction and stack:
                stack[-1][2] = True
            elif stack:
                stack[-1][4].add(speaker)
        elif m := _DFS_REFUTE.fullmatch(line):
            person = c.person(line_no, m[1])
            if person is not None:
                pop_refuted(line_no, person, ROLE_WORDS[m[2]], need_contradiction=True)
        elif m := _DFS_NEITHER.fullmatch(line):
            child, person = c.person(line_no, m[1]), c.person(line_no, m[2])
            if child is None or person is None:
                continue
            if not stack or stack[-1][3].get(child) != {True, False}:
                c.fail(line_no, f"both roles of {m[1]} were not refuted under this assumption")
            pop_refuted(line_no, person, ROLE_WORDS[m[3]], need_contradiction=False)
        elif m := _DFS_DONE.fullmatch(line):
            concluded = True
            if int(m[1]) != puzzle.n:
                c.fail(line_no, f"there are {puzzle.n} statements, not {m[1]}")
            c.conclusion(line_no, m[2], roles())
            checked = set().union(*(frame[4] for frame in stack))
            if checked != set(range(puzzle.n)):
                missing = ", ".join(puzzle.names[i] for i in sorted(set(range(puzzle.n)) - checked))
                c.fail(line_no, f"the statements of {missing} were never checked on this branch")
        else:
            c.fail(line_no, f"unrecognised line {line!r}")
    if not concluded:
        c.fail(len(lines), "no conclusion")
    return c.problems
