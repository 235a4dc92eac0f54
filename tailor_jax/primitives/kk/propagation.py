"""forced_role_propagation and error_recovery: deduce the roles single statements force,
branch (or, for error_recovery, guess wrong first) only when stuck."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tailor_jax.primitives.kk.common import (
    ROLE_WORDS, BOOL_WORDS, NAME, ROLE, TRUTH, QUOTED, role_word, truth_word, Puzzle, Checker, numbered_lines,
)
from tailor_jax.tasks.kk import evaluate, solution_text


# --- propagation (forced_role_propagation and error_recovery) ------------------------------
@dataclass(frozen=True)
class PropagationStyle:
    """Wording of the lines that differ between the propagation primitives."""

    header: str
    branch: str  # "{name} is a {role}" follows
    refuted: str  # "{name} is a {role}" follows (the opposite of the branch)
    done: str  # the solution text follows
    guess_first: bool  # open with a deliberately wrong guess (error recovery)


FORCED_STYLE = PropagationStyle(
    header="Find roles that single statements force, pass each new role on, and branch only when stuck.",
    branch="Stuck; suppose", refuted="That fails, so", done="Everyone is placed:", guess_first=False,
)
RECOVERY_STYLE = PropagationStyle(
    header="Make a guess, follow its consequences, and back up if it breaks.",
    branch="Guess:", refuted="The guess was wrong, so", done="Now all roles are known:", guess_first=True,
)


def _forced(puzzle: Puzzle, roles: list[bool | None]) -> tuple[str, int, int | None, bool | None]:
    """The next propagation step: ("contradiction", speaker, None, None), ("force", speaker,
    person, role), or ("stuck", -1, None, None); statements are scanned in speaker order."""
    for speaker in range(puzzle.n):
        options = puzzle.local_options(speaker, roles)
        if not options:
            return "contradiction", speaker, None, None
        for person in sorted(options[0]):
            values = {option[person] for option in options}
            if len(values) == 1:
                return "force", speaker, person, values.pop()
    return "stuck", -1, None, None


def _force_line(puzzle: Puzzle, roles: list[bool | None], speaker: int, person: int, role: bool) -> str:
    a, s, p = puzzle.names[speaker], puzzle.texts[speaker], puzzle.names[person]
    if roles[speaker] is not None and person != speaker:
        return f'{a} is a {role_word(roles[speaker])}, so "{s}" is {truth_word(roles[speaker])}, hence {p} is a {role_word(role)}.'
    value = evaluate(puzzle.statements[speaker], roles)
    if person == speaker and value is not None:
        return f'{a}\'s statement "{s}" is {truth_word(value)} here, so {a} is a {role_word(role)}.'
    return f'{a} says "{s}": this only fits if {p} is a {role_word(role)}.'


def _propagate(puzzle: Puzzle, roles: list[bool | None], lines: list[str]) -> list[bool | None] | None:
    """Propagate forced roles; branch when stuck (always in the FORCED_STYLE wording). Returns the
    full roles, or None on a contradiction (after writing its line)."""
    roles = list(roles)
    while True:
        kind, speaker, person, role = _forced(puzzle, roles)
        if kind == "contradiction":
            lines.append(f'{puzzle.names[speaker]} says "{puzzle.texts[speaker]}": no roles fit now, contradiction.')
            return None
        if kind == "force":
            lines.append(_force_line(puzzle, roles, speaker, person, role))
            roles[person] = role
            continue
        if None not in roles:
            return roles
        person = roles.index(None)
        lines.append(f"{FORCED_STYLE.branch} {puzzle.names[person]} is a knight.")
        result = _propagate(puzzle, roles[:person] + [True] + roles[person + 1 :], lines)
        if result is not None:
            return result
        lines.append(f"{FORCED_STYLE.refuted} {puzzle.names[person]} is a knave.")
        roles[person] = False


def _wrong_guess(puzzle: Puzzle) -> tuple[int, bool]:
    """The wrong single-role guess whose refutation is shortest (no branching preferred)."""
    best = None
    for person in range(puzzle.n):
        lines: list[str] = []
        wrong = [None] * puzzle.n
        wrong[person] = not puzzle.solution[person]
        _propagate(puzzle, wrong, lines)
        branched = any(line.startswith(FORCED_STYLE.branch) for line in lines)
        key = (branched, len(lines), person)
        if best is None or key < best[0]:
            best = (key, person)
    person = best[1]
    return person, not puzzle.solution[person]


def render_propagation(record: dict, style: PropagationStyle) -> str:
    puzzle = Puzzle.of(record)
    lines = [style.header]
    roles: list[bool | None] = [None] * puzzle.n
    if style.guess_first:
        person, role = _wrong_guess(puzzle)
        lines.append(f"{style.branch} {puzzle.names[person]} is a {role_word(role)}.")
        guessed = list(roles)
        guessed[person] = role
        if _propagate(puzzle, guessed, lines) is not None:
            raise AssertionError("a wrong guess reached a consistent assignment")
        lines.append(f"{style.refuted} {puzzle.names[person]} is a {role_word(not role)}.")
        roles[person] = not role
    final = _propagate(puzzle, roles, lines)
    lines.append(f"{style.done} {solution_text(puzzle.names, final)}")
    return "\n".join(lines)


_P_KNOWN = re.compile(rf'{NAME} is a {ROLE}, so {QUOTED} is {TRUTH}, hence {NAME} is a {ROLE}\.')
_P_SETTLED = re.compile(rf"{NAME}'s statement {QUOTED} is {TRUTH} here, so {NAME} is a {ROLE}\.")
_P_ONLY = re.compile(rf'{NAME} says {QUOTED}: this only fits if {NAME} is a {ROLE}\.')
_P_CONTRA = re.compile(rf'{NAME} says {QUOTED}: no roles fit now, contradiction\.')


def check_propagation(record: dict, trace: str, style: PropagationStyle) -> list[str]:
    puzzle = Puzzle.of(record)
    c = Checker(puzzle)
    lines = numbered_lines(trace)
    if not lines or lines[0][1] != style.header:
        c.fail(1, "missing the header line")
    branch_openers = {style.branch, FORCED_STYLE.branch}
    branch_closers = {style.refuted, FORCED_STYLE.refuted}
    roles: list[bool | None] = [None] * puzzle.n
    # Branch frames: (roles before the branch, person, assumed role, contradiction seen).
    frames: list[list] = []
    concluded, contradicted = False, False

    def force(line_no: int, speaker: int, person: int, role: bool) -> None:
        if roles[person] is not None:
            c.fail(line_no, f"{puzzle.names[person]}'s role is already known here")
            return
        options = puzzle.local_options(speaker, roles)
        if not options:
            c.fail(line_no, f"{puzzle.names[speaker]}'s statement cannot fit at all here (a contradiction, not a deduction)")
        elif person not in options[0] or any(option[person] != role for option in options):
            c.fail(line_no, f"{puzzle.names[speaker]}'s statement does not force {puzzle.names[person]} to be a {role_word(role)}")
        roles[person] = role

    for line_no, line in lines[1:]:
        if concluded:
            c.fail(line_no, "text after the conclusion")
            continue
        if contradicted and not any(line.startswith(closer + " ") for closer in branch_closers):
            c.fail(line_no, "reasoning continues after a contradiction without backing up")
        if line.startswith(style.done + " "):
            concluded = True
            if None in roles:
                c.fail(line_no, "concludes before every role is known")
            c.conclusion(line_no, line[len(style.done) + 1 :], roles)
        elif m := _P_KNOWN.fullmatch(line):
            speaker, person = c.person(line_no, m[1]), c.person(line_no, m[5])
            if speaker is None or person is None or not c.statement_of(line_no, speaker, m[3]):
                continue
            c.role_claim(line_no, speaker, ROLE_WORDS[m[2]], roles)
            if BOOL_WORDS[m[4]] != ROLE_WORDS[m[2]]:
                c.fail(line_no, f"a {m[2]}'s statement is not {m[4]}")
            force(line_no, speaker, person, ROLE_WORDS[m[6]])
        elif m := _P_SETTLED.fullmatch(line):
            speaker, person = c.person(line_no, m[1]), c.person(line_no, m[4])
            if speaker is None or person is None or not c.statement_of(line_no, speaker, m[2]):
                continue
            if person != speaker:
                c.fail(line_no, f"a settled statement decides its own speaker's role, not {m[4]}'s")
            c.value_claim(line_no, speaker, BOOL_WORDS[m[3]], roles)
            if BOOL_WORDS[m[3]] != ROLE_WORDS[m[5]]:
                c.fail(line_no, f"a {m[3]} statement makes its speaker a {role_word(BOOL_WORDS[m[3]])}")
            force(line_no, speaker, person, ROLE_WORDS[m[5]])
        elif m := _P_ONLY.fullmatch(line):
            speaker, person = c.person(line_no, m[1]), c.person(line_no, m[3])
            if speaker is not None and person is not None and c.statement_of(line_no, speaker, m[2]):
                force(line_no, speaker, person, ROLE_WORDS[m[4]])
        elif m := _P_CONTRA.fullmatch(line):
            speaker = c.person(line_no, m[1])
            if speaker is None or not c.statement_of(line_no, speaker, m[2]):
                continue
            if puzzle.local_options(speaker, roles):
                c.fail(line_no, f"{m[1]}'s statement can still fit here: no contradiction")
            if not frames:
                c.fail(line_no, "a contradiction outside any guess")
            contradicted = True
        elif m := re.fullmatch(rf"(.+) {NAME} is a {ROLE}\.", line):
            opener, person = m[1], c.person(line_no, m[2])
            if person is None:
                continue
            role = ROLE_WORDS[m[3]]
            if opener in branch_openers:
                if roles[person] is not None:
                    c.fail(line_no, f"branches on {m[2]}, whose role is already known")
                frames.append([list(roles), person, role])
                roles[person] = role
            elif opener in branch_closers:
                if not frames or frames[-1][1] != person or frames[-1][2] == role:
                    c.fail(line_no, f"backs up to {m[2]} as a {m[3]}, which is not the opposite of the open guess")
                    continue
                if not contradicted:
                    c.fail(line_no, "backs up without a contradiction")
                before, _, assumed = frames.pop()
                trial = list(before)
                trial[person] = assumed
                if puzzle.extends_to_solution(trial):
                    c.fail(line_no, f"{m[2]} can be a {role_word(assumed)}: the guess was not wrong")
                roles = before
                roles[person] = role
                contradicted = False
            else:
                c.fail(line_no, f"unrecognised line {line!r}")
        else:
            c.fail(line_no, f"unrecognised line {line!r}")
    if not concluded:
        c.fail(len(lines), "no conclusion")
    return c.problems
