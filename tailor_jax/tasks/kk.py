"""Knights and Knaves (K&K): the logic-puzzle task of Xie et al. 2024, built as in
/work/shared/SPEC-tasks.md section 1.

Each of n people (2..8) makes one statement about who is a knight (always truthful) and who
is a knave (always lying); a problem is kept only if exactly one assignment of roles is
consistent with all statements. A statement is a nested tuple (nested lists in JSON):

    ("telling-truth", i)  person i is a knight        ("lying", i)  person i is a knave
    ("not", s)   ("and", s1, s2, ...)   ("or", s1, s2, ...)   ("->", s1, s2)   ("<=>", s1, s2)

Sampling per person with depth limit D and width limit W: a uniform 6-face die; at remaining
depth 1 or on face 0 a leaf (kind and target uniform, "I am lying" rejected); face 1 ->
not(leaf); 2 -> and, 3 -> or (width uniform in [2, W]); 4 -> "->"; 5 -> "<=>"; children at
depth - 1, duplicate children of one compound rejected.

Uniqueness is checked for all 2^n assignments at once: a statement's truth table is a Python
int whose bit `a` is its value under assignment `a` (bit i of `a` set = person i is a knight),
so and/or/not are single big-int operations and the count of consistent assignments is a
popcount. `solve` is a separate, plain brute-force evaluator.

Records carry an `"answer"` field equal to `"solution"` (list of bool, true = knight), so the
shared `Task.answer()` / `is_correct()` work unchanged. `format_answer` needs the names
(`format_answer(solution, names=record["names"])`); `target()` passes them.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import CliOption, DatasetConfig, DatasetLevel, Task, parse_level_range
from tailor_jax.tasks.prompt import format_completion

MIN_PEOPLE, MAX_PEOPLE = 2, 8
MAX_DEPTH, MAX_WIDTH = 8, 8  # statement size grows like W^D; beyond this it is no longer a puzzle
LEAF_KINDS = ("telling-truth", "lying")
OPERATORS = ("not", "and", "or", "->", "<=>")
# Consecutive draws without a new uniquely solvable problem before the generator gives up.
MAX_DRAWS_PER_RECORD = 1000
MAX_CHILD_DRAWS = 1000

NAME_POOL = (
    "Alice", "Benjamin", "Charlotte", "Daniel", "Emily", "Felix", "Grace", "Henry", "Isabella",
    "Jack", "Katherine", "Liam", "Mia", "Noah", "Olivia", "Peter", "Quinn", "Rachel", "Samuel",
    "Sophia", "Thomas", "Ursula", "Victor", "William", "Xavier", "Yara", "Zoey", "Aiden", "Bella",
    "Caleb", "Chloe", "David", "Ella", "Ethan", "Fiona", "George", "Hannah", "Isaac", "Julia",
    "Kevin", "Lily", "Lucas", "Madison", "Mason", "Nora", "Oliver", "Penelope", "Riley", "Ryan",
    "Scarlett", "Sebastian", "Taylor", "Tyler", "Victoria", "Wyatt", "Zachary", "Amelia", "Evelyn",
    "Harper", "Jacob",
)  # fmt: skip

# `{name}` speaks; `{S}` is the statement with a capital first letter (quoted speech), `{s}`
# as it reads inside a sentence (reported speech).
SPEECH_TEMPLATES = (
    '{name} said, "{S}."',
    "{name} told you that {s}.",
    'In {name}\'s words: "{S}."',
    '{name} stated, "{S}."',
    "{name} claimed that {s}.",
    '{name} remarked, "{S}."',
    'According to {name}, "{S}."',
    '{name} asserted: "{S}."',
    '{name} noted, "{S}."',
    '{name} commented, "{S}."',
    'As {name} put it, "{S}."',
    "{name} insisted that {s}.",
    '"{S}," said {name}.',
    '{name} mentioned, "{S}."',
)

OPENING = (
    "A very special island is inhabited only by knights and knaves. "
    "Knights always tell the truth, and knaves always lie."
)
CLOSING = "So who is a knight and who is a knave?"


# --- statements ----------------------------------------------------------------------------
def statement_from_json(obj: Any, n_people: int) -> tuple:
    """A validated statement tuple from its JSON/Python-literal form (lists or tuples).

    Raises ValueError naming what is wrong (callers turn it into a TailorError with context).
    """
    if not isinstance(obj, (list, tuple)) or not obj or not isinstance(obj[0], str):
        raise ValueError(f"a statement must be a list starting with an operator, got {obj!r}")
    op, args = obj[0], obj[1:]
    if op in LEAF_KINDS:
        if len(args) != 1 or isinstance(args[0], bool) or not isinstance(args[0], int):
            raise ValueError(f"a {op!r} leaf takes one person index, got {obj!r}")
        if not 0 <= args[0] < n_people:
            raise ValueError(f"person index {args[0]} is out of range for {n_people} people")
        return (op, args[0])
    arity = {"not": (1, 1), "and": (2, None), "or": (2, None), "->": (2, 2), "<=>": (2, 2)}
    if op not in arity:
        raise ValueError(f"unknown statement operator {op!r}; use one of {', '.join(LEAF_KINDS + OPERATORS)}")
    lo, hi = arity[op]
    if len(args) < lo or (hi is not None and len(args) > hi):
        raise ValueError(f"{op!r} takes {lo if lo == hi else f'at least {lo}'} sub-statements, got {len(args)}")
    return (op, *(statement_from_json(arg, n_people) for arg in args))


def statement_to_json(statement: tuple) -> list:
    op, *args = statement
    if op in LEAF_KINDS:
        return [op, args[0]]
    return [op, *(statement_to_json(arg) for arg in args)]


def statement_depth(statement: tuple) -> int:
    """Nesting depth: 1 for a leaf (the smallest sampler depth limit that can produce it)."""
    if statement[0] in LEAF_KINDS:
        return 1
    return 1 + max(statement_depth(arg) for arg in statement[1:])


def statement_width(statement: tuple) -> int:
    """Largest and/or arity inside the statement (0 if it has none)."""
    if statement[0] in LEAF_KINDS:
        return 0
    own = len(statement) - 1 if statement[0] in ("and", "or") else 0
    return max(own, *(statement_width(arg) for arg in statement[1:]))


# --- truth tables as big ints (all 2^n assignments at once) ---------------------------------
@lru_cache(maxsize=None)
def knight_masks(n_people: int) -> tuple[tuple[int, ...], int]:
    """(K, full): K[i] has bit a set iff person i is a knight in assignment a; full = all bits."""
    size = 1 << n_people
    masks = []
    for i in range(n_people):
        block = 1 << i  # runs of `block` zeros then `block` ones, repeated
        run_of_ones = ((1 << block) - 1) << block
        mask = 0
        for start in range(0, size, 2 * block):
            mask |= run_of_ones << start
        masks.append(mask)
    return tuple(masks), (1 << size) - 1


def truth_table(statement: tuple, masks: Sequence[int], full: int) -> int:
    op = statement[0]
    if op == "telling-truth":
        return masks[statement[1]]
    if op == "lying":
        return full ^ masks[statement[1]]
    tables = [truth_table(arg, masks, full) for arg in statement[1:]]
    if op == "not":
        return full ^ tables[0]
    if op == "and":
        out = full
        for t in tables:
            out &= t
        return out
    if op == "or":
        out = 0
        for t in tables:
            out |= t
        return out
    if op == "->":
        return (full ^ tables[0]) | tables[1]
    if op == "<=>":
        return full ^ (tables[0] ^ tables[1])
    raise ValueError(f"unknown statement operator {op!r}")


def consistent_assignments(statements: Sequence[tuple]) -> int:
    """Bitmask over assignments a of those where every person i's role matches statement i."""
    masks, full = knight_masks(len(statements))
    consistent = full
    for knight, statement in zip(masks, statements):
        consistent &= full ^ (knight ^ truth_table(statement, masks, full))
    return consistent


def assignment_roles(assignment: int, n_people: int) -> list[bool]:
    return [bool(assignment >> i & 1) for i in range(n_people)]


# --- sampling ------------------------------------------------------------------------------
class _Uniform:
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

    def __init__(self, uniform: _Uniform, n_people: int, depth: int, width: int):
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


# --- text ----------------------------------------------------------------------------------
def _role(is_knight: bool) -> str:
    return "knight" if is_knight else "knave"


def _is_simple(statement: tuple) -> bool:
    """Rendered as one clause with no connective: a leaf or not(leaf)."""
    return statement[0] in LEAF_KINDS or (statement[0] == "not" and statement[1][0] in LEAF_KINDS)


def render_statement(statement: tuple, names: Sequence[str]) -> str:
    """Statement text; every compound sub-statement is parenthesised, so any depth is unambiguous."""
    op, *args = statement
    if op in LEAF_KINDS:
        return f"{names[args[0]]} is a {_role(op == 'telling-truth')}"
    if op == "not":
        inner = args[0]
        if inner[0] in LEAF_KINDS:
            return f"{names[inner[1]]} is not a {_role(inner[0] == 'telling-truth')}"
        return f"it is not the case that ({render_statement(inner, names)})"
    parts = [render_statement(a, names) if _is_simple(a) else f"({render_statement(a, names)})" for a in args]
    if op in ("and", "or"):
        return f" {op} ".join(parts)
    if op == "->":
        return f"if {parts[0]} then {parts[1]}"
    if op == "<=>":
        return f"{parts[0]} if and only if {parts[1]}"
    raise ValueError(f"unknown statement operator {op!r}")


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_names(names: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def render_quiz(names: Sequence[str], statements: Sequence[tuple], templates: Sequence[int]) -> str:
    sentences = [OPENING, f"You meet {len(names)} inhabitants: {join_names(names)}."]
    for name, statement, template in zip(names, statements, templates):
        text = render_statement(statement, names)
        sentences.append(SPEECH_TEMPLATES[template].format(name=name, s=text, S=_capitalize(text)))
    sentences.append(CLOSING)
    return " ".join(sentences)


def solution_text(names: Sequence[str], solution: Sequence[bool]) -> str:
    """'A is a knight and B is a knave.' / 'A is a knight, B is a knave, and C is a knight.'"""
    clauses = [f"{name} is a {_role(role)}" for name, role in zip(names, solution)]
    if len(clauses) == 2:
        return f"{clauses[0]} and {clauses[1]}."
    return ", ".join(clauses[:-1]) + ", and " + clauses[-1] + "."


def solution_text_format(names: Sequence[str], solution: Sequence[bool]) -> str:
    """'(1) A is a knight\\n(2) B is a knave' -- the text expected inside <answer>."""
    return "\n".join(f"({i}) {name} is a {_role(role)}" for i, (name, role) in enumerate(zip(names, solution), 1))


# --- independent solver and the assume-and-refute trace --------------------------------------
def evaluate(statement: Sequence, roles: Sequence[bool | None]) -> bool | None:
    """Three-valued (Kleene) value of a statement under a partial assignment (None = unknown).

    A definite result holds for every way of filling in the unknown roles."""
    op, *args = statement
    if op in LEAF_KINDS:
        role = roles[args[0]]
        return None if role is None else role == (op == "telling-truth")
    values = [evaluate(arg, roles) for arg in args]
    if op == "not":
        return None if values[0] is None else not values[0]
    if op == "and":
        return False if False in values else (None if None in values else True)
    if op == "or":
        return True if True in values else (None if None in values else False)
    if op == "->":
        premise, conclusion = values
        if premise is False or conclusion is True:
            return True
        return None if premise is None or conclusion is None else False
    if op == "<=>":
        return None if None in values else values[0] == values[1]
    raise ValueError(f"unknown statement operator {op!r}")


def brute_force_solutions(statements: Sequence[Sequence]) -> list[list[bool]]:
    """All consistent assignments, by trying each of the 2^n role lists."""
    n = len(statements)
    return [
        list(roles)
        for roles in itertools.product((True, False), repeat=n)
        if all(evaluate(s, roles) == roles[i] for i, s in enumerate(statements))
    ]


def assume_and_refute(names: Sequence[str], statements: Sequence[tuple]) -> list[str]:
    """Depth-first search over roles in name order, as text. After each assumption it checks,
    once per branch, every statement whose speaker's role is assumed and whose truth is already
    settled (the same for every way of filling in the roles not yet assumed); a mismatch
    refutes the assumption."""
    n = len(names)
    masks, full = knight_masks(n)
    tables = [truth_table(s, masks, full) for s in statements]
    roles: list[bool | None] = [None] * n
    lines: list[str] = []

    def settled_value(i: int, region: int) -> bool | None:
        """Statement i's value on every assignment in `region` (None if it varies there)."""
        if tables[i] & region == region:
            return True
        return False if tables[i] & region == 0 else None

    def checks(checked: frozenset, region: int) -> tuple[bool, frozenset]:
        for i in range(n):
            if i in checked or roles[i] is None:
                continue
            value = settled_value(i, region)
            if value is None:
                continue
            checked = checked | {i}
            said = f'{names[i]}\'s statement "{render_statement(statements[i], names)}" is then {str(value).lower()}'
            if value != roles[i]:
                lines.append(f"{said}, but {names[i]} is a {_role(roles[i])}: contradiction.")
                return False, checked
            lines.append(f"{said}, consistent with {names[i]} being a {_role(roles[i])}.")
        return True, checked

    def search(k: int, checked: frozenset, region: int) -> bool:
        for role in (True, False):
            roles[k] = role
            lines.append(f"Assume {names[k]} is a {_role(role)}.")
            narrowed = region & (masks[k] if role else full ^ masks[k])
            ok, now_checked = checks(checked, narrowed)
            if not ok:
                lines.append(f"So {names[k]} cannot be a {_role(role)}.")
                continue
            if k + 1 == n or search(k + 1, now_checked, narrowed):
                return True
            lines.append(f"Neither role works for {names[k + 1]}, so {names[k]} cannot be a {_role(role)}.")
        roles[k] = None
        return False

    if search(0, frozenset(), full):
        lines.append(f"All {n} statements are consistent with these roles: {solution_text(names, roles)}")
    else:
        lines.append("No assignment of roles is consistent with all statements.")
    return lines


# --- the task ------------------------------------------------------------------------------
def _int_option(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        value = None  # reject True/False explicitly instead of reading them as 1/0
    try:
        number = int(value)
        if str(number) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise TailorError(f"kk {name} must be an integer in {lo}..{hi}, got {value!r}") from None
    if not lo <= number <= hi:
        raise TailorError(f"kk {name} must lie in {lo}..{hi}, got {number}")
    return number


class KnightsAndKnaves(Task):
    """K&K. Options: people (2..8, or a range "lo-hi" drawn uniformly per record; default 3),
    depth (statement depth limit, 1..8, default 2), width (and/or width limit, 2..8, default 2)."""

    name = "kk"
    level_option = "people"
    level_label = "people"
    key_fields = ("n_people", "statements")
    cli_options = (
        CliOption("people", "number of people, 2..8, or a range such as 3-7"),
        CliOption("depth", "statement depth limit (default 2)", int),
        CliOption("width", "and/or width limit (default 2)", int),
    )

    @classmethod
    def dataset_configs(cls) -> list[DatasetConfig]:
        """`n2`..`n8` (Xie et al. 2024 sizes) and `logic_rl` (train n = 3..7, test n = 2..8)."""
        configs = [
            DatasetConfig(f"n{n}", f"K&K with {n} people (Xie et al. 2024 sizes)",
                          (DatasetLevel({"people": n}, (("test", "test", 100), ("train", "train", 200 if n == 2 else 1000))),))
            for n in range(2, 9)
        ]
        logic_rl = tuple(
            DatasetLevel({"people": n}, ((f"test_n{n}", "test", 100),) + ((("train", "train", 900),) if 3 <= n <= 7 else ()))
            for n in range(2, 9)
        )
        configs.append(DatasetConfig("logic_rl", "Logic-RL: train on n = 3..7 (900 each), test per n = 2..8 (100 each)", logic_rl))
        return configs

    def __init__(self, people: int | str | tuple | list = 3, depth: int | str = 2, width: int | str = 2):
        self.people = parse_level_range(people, "people", MIN_PEOPLE, MAX_PEOPLE)
        self.depth = _int_option(depth, "depth", 1, MAX_DEPTH)
        self.width = _int_option(width, "width", 2, MAX_WIDTH)
        leaves = 2 * self.people[0] - 1  # distinct leaves one speaker can say
        if self.depth >= 2 and self.width > leaves:
            raise TailorError(
                f"kk width {self.width} needs {self.width} distinct clauses but {self.people[0]} people give only "
                f"{leaves}; use width <= {leaves} or more people"
            )

    # --- data -------------------------------------------------------------------------
    def level_range(self) -> tuple[int, int]:
        """The people counts `generate` draws from, uniformly per problem."""
        return self.people

    def max_distinct(self, level: int) -> int | None:
        """The most distinct problems `generate` can give at `level` people (None: too many to count)."""
        return distinct_problems(int(level), self.depth, self.width)

    def generate(self, num: int, seed: int) -> Iterator[dict]:
        """Yield `num` uniquely solvable problems, never repeating a statement tuple."""
        uniform = _Uniform(seed)
        samplers = {
            n: StatementSampler(uniform, n, self.depth, self.width) for n in range(self.people[0], self.people[1] + 1)
        }
        seen: set[tuple] = set()
        for index in range(num):
            n = uniform.between(*self.people)
            for _ in range(MAX_DRAWS_PER_RECORD):
                statements = samplers[n].problem()
                consistent = consistent_assignments(statements)
                if consistent.bit_count() == 1 and statements not in seen:
                    break
            else:
                raise TailorError(
                    f"kk found no new uniquely solvable problem in {MAX_DRAWS_PER_RECORD} draws after {index} of {num} "
                    f"(people={n}, depth={self.depth}, width={self.width}); this setting has too few distinct "
                    "problems: ask for fewer, or use more people or a larger depth"
                )
            seen.add(statements)
            yield self._record(f"kk-n{n}-s{seed}-{index}", statements, consistent, uniform)

    def generate_splits(self, seed: int, sizes: Mapping[str, int]) -> dict[str, list[dict]]:
        """Disjoint splits from one sampler, filled in the order given: e.g.
        `generate_splits(0, {"test": 100, "train": 1000})`."""
        for split, count in sizes.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise TailorError(f"kk split {split!r} size must be a non-negative integer, got {count!r}")
        records = self.generate(sum(sizes.values()), seed)
        return {split: list(itertools.islice(records, count)) for split, count in sizes.items()}

    def _record(self, record_id: str, statements: tuple, consistent: int, uniform: _Uniform) -> dict:
        n = len(statements)
        names = uniform.sample(NAME_POOL, n)
        templates = [uniform.below(len(SPEECH_TEMPLATES)) for _ in range(n)]
        solution = assignment_roles(consistent.bit_length() - 1, n)
        return {
            "task": "kk",
            "id": record_id,
            "n_people": n,
            "quiz": render_quiz(names, statements, templates),
            "names": names,
            "statements": [statement_to_json(s) for s in statements],
            "solution": solution,
            "solution_text": solution_text(names, solution),
            "solution_text_format": solution_text_format(names, solution),
            "depth": self.depth,
            "width": self.width,
            "answer": list(solution),
        }

    def solve(self, record: dict) -> list[bool]:
        """The unique consistent assignment, by brute force over the record's statements."""
        solutions = brute_force_solutions(record["statements"])
        if len(solutions) != 1:
            raise TailorError(
                f"kk record {record.get('id')!r} has {len(solutions)} consistent assignments; "
                "a K&K problem needs exactly one"
            )
        return solutions[0]

    def difficulty(self, record: dict) -> int:
        return int(record["n_people"])

    # --- text -------------------------------------------------------------------------
    def question(self, record: dict) -> str:
        return record["quiz"]

    def solution_trace(self, record: dict) -> str:
        statements = [statement_from_json(s, len(record["names"])) for s in record["statements"]]
        lines = ["Test the roles one person at a time: assume a role, check every statement whose truth is settled, "
                 "and drop the assumption at the first contradiction."]  # fmt: skip
        return "\n".join(lines + assume_and_refute(record["names"], statements))

    def format_answer(self, answer: Sequence[bool], names: Sequence[str] | None = None) -> str:
        if names is None:
            raise TailorError("kk format_answer needs the names: format_answer(solution, names=record['names'])")
        return solution_text_format(names, answer)

    def parse_answer(self, text: str, record: dict) -> list[bool] | None:
        try:
            return parse_roles(text, record["names"])
        except Exception:  # a grading hook never raises on model output
            return None

    def target(self, record: dict, trace: str | None = None) -> str:
        trace = self.solution_trace(record) if trace is None else trace
        return format_completion(trace, self.format_answer(self.answer(record), names=record["names"]))


# --- answer parsing ------------------------------------------------------------------------
ROLE_WORD = re.compile("knight|knave", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _claim_pattern(name: str) -> re.Pattern:
    # No nested quantifiers: matching is linear in the text length.
    return re.compile(rf"(?<!\w){re.escape(name)}\s+is\s+a\s+(knight|knave)(?!\w)", re.IGNORECASE)


def parse_roles(text: str, names: Sequence[str]) -> list[bool] | None:
    """Roles from an answer such as "(1) Zoey is a knave (2) Noah is a knight": each person
    stated exactly once as "Name is a knight|knave" (any case), and no other occurrence of
    knight/knave anywhere (so the count of role words equals the number of people)."""
    if not isinstance(text, str) or not names:
        return None
    role_words = 0
    for _ in ROLE_WORD.finditer(text):
        role_words += 1
        if role_words > len(names):
            return None
    if role_words != len(names):
        return None
    roles = []
    for name in names:
        matches = list(itertools.islice(_claim_pattern(name).finditer(text), 2))
        if len(matches) != 1:
            return None
        roles.append(matches[0].group(1).lower() == "knight")
    return roles


TASK_CLASS = KnightsAndKnaves
