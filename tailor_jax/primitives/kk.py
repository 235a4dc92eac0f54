"""Knights & Knaves reasoning primitives: programmatic renderers of differently structured
chains of thought, each with a step checker that re-verifies every claim against the record.

Every trace is a list of lines; the checkers parse each line, evaluate every claim about a
statement with the task's Kleene evaluator (`tasks.kk.evaluate`) under the roles the trace has
established at that point, and verify every "this branch is impossible" claim by the task's
truth tables (no consistent assignment extends the roles). An unrecognised line is a problem.

Primitives (see docs/primitives-kk-igsm.md for examples and the size figures):
  assume_refute_dfs        the task's own depth-first assume-and-refute trace
  case_enumeration         all 2^n cases in order, each stopped at its first broken statement;
                           a broken statement already settled by a prefix of the roles rules out
                           the whole block of cases sharing that prefix in one line
  forced_role_propagation  deduce roles forced by single statements, branch only when stuck
  statement_analysis       each statement's allowed local role combinations, then joined
  answer_first_verify      state the answer, then verify every statement under it
  with_self_verification   assume_refute_dfs plus a final check of every statement
                           (`with_verification(base)` composes any primitive with that check)
  error_recovery           a deliberately wrong guess, propagation to a contradiction,
                           backtracking, then propagation to the answer
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from tailor_jax.primitives.base import Primitive
from tailor_jax.tasks.kk import (
    KnightsAndKnaves,
    LEAF_KINDS,
    consistent_assignments,
    evaluate,
    truth_table,
    knight_masks,
    parse_roles,
    render_statement,
    solution_text,
    statement_from_json,
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
        return tuple(tuple(sorted({i} | _mentioned(s))) for i, s in enumerate(self.statements))

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


def _mentioned(statement: tuple) -> set[int]:
    if statement[0] in LEAF_KINDS:
        return {statement[1]}
    return set().union(*(_mentioned(arg) for arg in statement[1:]))


class _Checker:
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


def _lines(trace: str) -> list[tuple[int, str]]:
    return [(k, line) for k, line in enumerate(trace.split("\n"), 1)]


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
    c = _Checker(puzzle)
    header = render_dfs(record).split("\n", 1)[0]
    lines = _lines(trace)
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
    c = _Checker(puzzle)
    n, total = puzzle.n, 1 << puzzle.n
    lines = _lines(trace)
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
    c = _Checker(puzzle)
    lines = _lines(trace)
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


# --- statement_analysis ------------------------------------------------------------------
Table = tuple[tuple[int, ...], frozenset[tuple[bool, ...]]]  # (people, allowed role rows)


def _statement_table(puzzle: Puzzle, speaker: int) -> Table:
    people = puzzle.involved[speaker]
    rows = set()
    for combo in itertools.product((True, False), repeat=len(people)):
        roles: list[bool | None] = [None] * puzzle.n
        for p, r in zip(people, combo):
            roles[p] = r
        if puzzle.fits(speaker, roles):
            rows.add(combo)
    return people, frozenset(rows)


def _join(a: Table, b: Table) -> Table:
    people = tuple(sorted(set(a[0]) | set(b[0])))
    rows = set()
    for row_a in a[1]:
        for row_b in b[1]:
            merged = dict(zip(a[0], row_a))
            if all(merged.setdefault(p, r) == r for p, r in zip(b[0], row_b)):
                rows.add(tuple(merged[p] for p in people))
    return people, frozenset(rows)


def _table_text(puzzle: Puzzle, table: Table) -> str:
    names = ", ".join(puzzle.names[p] for p in table[0])
    rows = " or ".join(roles_tuple_text(row) for row in sorted(table[1], reverse=True))
    return f"({names}) = {rows}" if rows else f"({names}) = nothing"


def _parse_table(puzzle: Puzzle, names_text: str, rows_text: str) -> Table | None:
    names = [name.strip() for name in names_text.split(",")]
    if any(name not in puzzle.index for name in names):
        return None
    people = tuple(puzzle.index[name] for name in names)
    rows = []
    for row_text in ([] if rows_text == "nothing" else rows_text.split(" or ")):
        row = parse_roles_tuple(row_text)
        if row is None or len(row) != len(people) or None in row:
            return None
        rows.append(row)
    return people, frozenset(rows)


SA_HEADER = "First list which roles each statement allows on its own, then combine the lists."
_SA_OWN = re.compile(rf'{NAME}: {QUOTED} allows \(([A-Za-z, ]+)\) = (.+)\.')
_SA_START = re.compile(rf"Combine, starting from {NAME}'s list\.")
_SA_ADD = re.compile(rf"Add {NAME}'s: \(([A-Za-z, ]+)\) = (.+)\.")
_SA_DONE = re.compile(r"One option remains: (.*)")


def render_statement_analysis(record: dict) -> str:
    puzzle = Puzzle.of(record)
    tables = [_statement_table(puzzle, i) for i in range(puzzle.n)]
    lines = [SA_HEADER]
    for i, table in enumerate(tables):
        lines.append(f'{puzzle.names[i]}: "{puzzle.texts[i]}" allows {_table_text(puzzle, table)}.')
    # Greedy join order: always add the list that leaves the fewest combined rows.
    start = min(range(puzzle.n), key=lambda i: (len(tables[i][1]), i))
    current, left = tables[start], [i for i in range(puzzle.n) if i != start]
    lines.append(f"Combine, starting from {puzzle.names[start]}'s list.")
    while left:
        pick = min(left, key=lambda i: (len(_join(current, tables[i])[1]), -len(set(tables[i][0]) & set(current[0])), i))
        left.remove(pick)
        current = _join(current, tables[pick])
        lines.append(f"Add {puzzle.names[pick]}'s: {_table_text(puzzle, current)}.")
    (row,) = current[1]
    lines.append(f"One option remains: {solution_text(puzzle.names, [dict(zip(current[0], row))[p] for p in range(puzzle.n)])}")
    return "\n".join(lines)


def check_statement_analysis(record: dict, trace: str) -> list[str]:
    puzzle = Puzzle.of(record)
    c = _Checker(puzzle)
    lines = _lines(trace)
    if not lines or lines[0][1] != SA_HEADER:
        c.fail(1, "missing the header line")
    listed: dict[int, Table] = {}
    current: Table | None = None
    combined: set[int] = set()
    concluded = False

    def same_table(line_no: int, claimed: Table | None, true: Table, what: str) -> None:
        if claimed is None:
            c.fail(line_no, f"cannot read the table of {what}")
        elif set(claimed[0]) != set(true[0]):
            c.fail(line_no, f"{what} concerns {', '.join(puzzle.names[p] for p in true[0])}")
        else:
            order = [claimed[0].index(p) for p in true[0]]
            rows = {tuple(row[k] for k in order) for row in claimed[1]}
            if rows - true[1]:
                c.fail(line_no, f"{what} lists {len(rows - true[1])} impossible option(s)")
            if true[1] - rows:
                c.fail(line_no, f"{what} misses {len(true[1] - rows)} possible option(s)")

    for line_no, line in lines[1:]:
        if concluded:
            c.fail(line_no, "text after the conclusion")
        elif m := _SA_OWN.fullmatch(line):
            speaker = c.person(line_no, m[1])
            if speaker is None or not c.statement_of(line_no, speaker, m[2]):
                continue
            true = _statement_table(puzzle, speaker)
            same_table(line_no, _parse_table(puzzle, m[3], m[4]), true, f"{m[1]}'s list")
            listed[speaker] = true
        elif m := _SA_START.fullmatch(line):
            speaker = c.person(line_no, m[1])
            if speaker is None:
                continue
            if speaker not in listed or current is not None:
                c.fail(line_no, f"cannot start combining from {m[1]}'s list here")
            current = _statement_table(puzzle, speaker)
            combined.add(speaker)
        elif m := _SA_ADD.fullmatch(line):
            speaker = c.person(line_no, m[1])
            if speaker is None:
                continue
            if current is None or speaker not in listed or speaker in combined:
                c.fail(line_no, f"{m[1]}'s list cannot be added here (not listed, already added, or no start)")
                continue
            current = _join(current, _statement_table(puzzle, speaker))
            combined.add(speaker)
            same_table(line_no, _parse_table(puzzle, m[2], m[3]), current, "the combined list")
        elif m := _SA_DONE.fullmatch(line):
            concluded = True
            if combined != set(range(puzzle.n)):
                missing = sorted(set(range(puzzle.n)) - combined)
                c.fail(line_no, f"concludes without combining the lists of {', '.join(puzzle.names[p] for p in missing)}")
            if current is None or len(current[1]) != 1:
                c.fail(line_no, "more than one option is left")
                c.conclusion(line_no, m[1])
            else:
                (row,) = current[1]
                c.conclusion(line_no, m[1], [dict(zip(current[0], row)).get(p) for p in range(puzzle.n)])
        else:
            c.fail(line_no, f"unrecognised line {line!r}")
    if not concluded:
        c.fail(len(lines), "no conclusion")
    return c.problems


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


def check_verification(c: _Checker, lines: list[tuple[int, str]], style: VerifyStyle) -> None:
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
    c = _Checker(Puzzle.of(record))
    check_verification(c, _lines(trace), ANSWER_FIRST_STYLE)
    return c.problems


def render_final_check(record: dict) -> str:
    puzzle = Puzzle.of(record)
    return "\n".join(verification_lines(puzzle, puzzle.solution, FINAL_CHECK_STYLE))


def check_final_check(record: dict, trace: str) -> list[str]:
    """Every statement checked once against roles that fit them all (the unique answer)."""
    c = _Checker(Puzzle.of(record))
    check_verification(c, _lines(trace), FINAL_CHECK_STYLE)
    return c.problems


def with_verification(base: Primitive, name: str | None = None) -> Primitive:
    """`base`'s trace followed by an explicit check of every statement under the answer."""

    def render(record: dict) -> str:
        puzzle = Puzzle.of(record)
        return base.render(record) + "\n" + "\n".join(verification_lines(puzzle, puzzle.solution, FINAL_CHECK_STYLE))

    def check(record: dict, trace: str) -> list[str]:
        c = _Checker(Puzzle.of(record))
        lines = trace.split("\n")
        starts = [k for k, line in enumerate(lines) if line.startswith(FINAL_CHECK_STYLE.opening + " ")]
        if not starts:
            return ["no final verification pass"]
        head = "\n".join(lines[: starts[-1]])
        problems = [f"{base.name}: {p}" for p in base.check(record, head)]
        check_verification(c, _lines(trace)[starts[-1] :], FINAL_CHECK_STYLE)
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


# --- the library ---------------------------------------------------------------------------
def _primitive(name: str, description: str, tags: set[str], render: Callable, check: Callable) -> Primitive:
    return Primitive(name, "kk", description, frozenset(tags), render, check)


ASSUME_REFUTE_DFS = _primitive(
    "assume_refute_dfs",
    "Go through the people in order: assume a role for the next person, check every statement whose "
    "truth is already settled, drop the assumption at the first contradiction, and back up when "
    "neither role works.",
    {"hypothesis", "backtracking", "verification"},
    render_dfs, check_dfs,
)
CASE_ENUMERATION = _primitive(
    "case_enumeration",
    "List every assignment of roles in a fixed order. Check each one statement by statement and stop "
    "at its first broken statement; when that break is already decided by the first few roles, rule "
    "out every case that shares them at once. The single surviving case is the answer.",
    {"enumeration", "verification"},
    render_case_enumeration, check_case_enumeration,
)
FORCED_ROLE_PROPAGATION = _primitive(
    "forced_role_propagation",
    "Start from statements that fix someone's role on their own, pass every new role on to the "
    "statements that mention that person, and only when no statement forces anything, suppose a "
    "role and follow it until it fits or breaks.",
    {"propagation", "forward", "hypothesis", "backtracking"},
    lambda record: render_propagation(record, FORCED_STYLE),
    lambda record, trace: check_propagation(record, trace, FORCED_STYLE),
)
STATEMENT_ANALYSIS = _primitive(
    "statement_analysis",
    "Work bottom-up: for each statement alone, list the role combinations of the people it involves "
    "that are possible (a knight's statement true, a knave's false); then combine the lists one by one "
    "until a single option remains.",
    {"decomposition", "enumeration", "subgoal"},
    render_statement_analysis, check_statement_analysis,
)
ANSWER_FIRST_VERIFY = _primitive(
    "answer_first_verify",
    "State the full assignment of roles you believe is right, then verify it statement by statement: "
    "each knight's statement must be true and each knave's false.",
    {"hypothesis", "verification"},
    render_answer_first, check_answer_first,
)
WITH_SELF_VERIFICATION = with_verification(ASSUME_REFUTE_DFS, name="with_self_verification")
ERROR_RECOVERY = _primitive(
    "error_recovery",
    "Guess a role, follow what it forces until a statement breaks, notice the contradiction, back up "
    "and take the opposite role, then continue until every role is known.",
    {"error_recovery", "backtracking", "hypothesis", "propagation"},
    lambda record: render_propagation(record, RECOVERY_STYLE),
    lambda record, trace: check_propagation(record, trace, RECOVERY_STYLE),
)

LIBRARY: dict[str, Primitive] = {
    p.name: p
    for p in (
        ASSUME_REFUTE_DFS, CASE_ENUMERATION, FORCED_ROLE_PROPAGATION, STATEMENT_ANALYSIS,
        ANSWER_FIRST_VERIFY, WITH_SELF_VERIFICATION, ERROR_RECOVERY,
    )
}  # fmt: skip

# Appended after the library primitives that do not verify by the compositions of the discover
# stage ("forced_role_propagation+final_check", ...): the final self-verification pass.
VERIFICATION_PASS = _primitive(
    "final_check",
    "Check every statement once more against the final roles.",
    {"verification"},
    render_final_check, check_final_check,
)
