"""K&K statements: their JSON form, size, truth tables as big ints (all 2^n assignments at
once), and the plain brute-force solver and Kleene evaluator."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache
from typing import Any


MIN_PEOPLE, MAX_PEOPLE = 2, 8
MAX_DEPTH, MAX_WIDTH = 8, 8  # statement size grows like W^D; beyond this it is no longer a puzzle
LEAF_KINDS = ("telling-truth", "lying")
OPERATORS = ("not", "and", "or", "->", "<=>")

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
