"""GF(p) chains: field arithmetic, the numeral symbols, and the trace renderers (walk steps,
numeric and affine walks, the forward and backward traces)."""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np


PRIMES = (11, 13)
KINDS = ("evaluation", "inversion")
STRATEGIES = ("forward", "backward", "mixed")
DATASET_RANGES = {"sft": (2, 5), "rl": (6, 9), "rl_long": (6, 15)}  # dataset config: chain lengths k
OPS = ("+", "-", "*")
MIN_STEPS, MAX_STEPS = 1, 32
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)  # 70 two-letter symbols

# Distinct problems sampled per requested record before the generator gives up: small
# (p, k) spaces run out of distinct problems, and then we say so instead of looping.
MAX_DRAWS_PER_RECORD = 50


# --- field arithmetic -------------------------------------------------------------------
def inverse(a: int, p: int) -> int:
    """Multiplicative inverse of a non-zero element of GF(p)."""
    if a % p == 0:
        raise ValueError("0 has no multiplicative inverse")
    return pow(a, p - 2, p)


def apply_op(op: str, value: int, c: int, p: int) -> int:
    if op == "+":
        return (value + c) % p
    if op == "-":
        return (value - c) % p
    if op == "*":
        return (value * c) % p
    raise ValueError(f"unknown op {op!r}")


def undo_op(op: str, value: int, c: int, p: int) -> int:
    """The v with apply_op(op, v, c) == value."""
    if op == "+":
        return (value - c) % p
    if op == "-":
        return (value + c) % p
    if op == "*":
        return (value * inverse(c, p)) % p
    raise ValueError(f"unknown op {op!r}")


def run_chain(ops: list, v0: int, p: int) -> int:
    value = v0
    for op, c in ops:
        value = apply_op(op, value, c, p)
    return value


def unrun_chain(ops: list, vk: int, p: int) -> int:
    value = vk
    for op, c in reversed(ops):
        value = undo_op(op, value, c, p)
    return value


# --- symbols -----------------------------------------------------------------------------
def symbol_table(p: int, symbol_seed: int = 0) -> dict[str, str]:
    """A seeded bijection {str(integer): syllable} over 0..p-1 (string keys, as in JSON)."""
    rng = np.random.default_rng([symbol_seed, p])
    chosen = rng.choice(len(SYLLABLES), size=p, replace=False)
    return {str(i): SYLLABLES[j] for i, j in enumerate(chosen)}


def symbol(record: dict, value: int) -> str:
    return record["symbols"][str(value)]


def _map(record: dict, a: int, var: str, b: int) -> str:
    return f"{symbol(record, a)}*{var}+{symbol(record, b)}"


def chain_values(record: dict) -> tuple[int, int]:
    """(v0, vk) of a record."""
    if record["kind"] == "evaluation":
        return record["given"], record["answer"]
    return record["answer"], record["given"]


# --- renderers (pure) --------------------------------------------------------------------
# The question numbers its ops, "(1) + ka, (2) * mo", and every line that applies or undoes an
# op starts with that op's tag. A model finds the op of a step by its number instead of
# counting lines, which tiny models trained from scratch do badly (measured: docs/results.md).


class Step(NamedTuple):
    """One walk step: apply `op c`, tagged with the chain position `index` (1-based) of the op
    it applies or undoes; `inverts` is the original constant when `c` is its inverse (the line
    is then preceded by the fact `inv inverts = c`)."""

    index: int
    op: str
    c: int
    inverts: int | None = None


def tag_labels(record: dict) -> list[int]:
    """The number each op is tagged with: 1..k, or the record's own `tags` (see `tag_pool`)."""
    return [int(t) for t in record["tags"]] if "tags" in record else list(range(1, len(record["ops"]) + 1))


def step_tag(record: dict, index: int) -> str:
    """The tag of op `index` (1-based chain position), as written before a step."""
    return f"({tag_labels(record)[index - 1]}) "


def render_question(record: dict) -> str:
    ops = ", ".join(f"{step_tag(record, i)}{op} {symbol(record, c)}" for i, (op, c) in enumerate(record["ops"], 1))
    field = f"GF({record['p']})"
    if record["kind"] == "evaluation":
        return f"In {field}, start from {symbol(record, record['given'])} and apply {ops} in order. What is the result y?"
    return f"In {field}, an unknown x becomes {symbol(record, record['given'])} after applying {ops} in order. What is x?"


def forward_steps(record: dict) -> list[Step]:
    """The chain's ops in order, as steps 1..k."""
    return [Step(i, op, int(c)) for i, (op, c) in enumerate(record["ops"], 1)]


def undo_steps(record: dict) -> list[Step]:
    """The inverse ops, last op first (`*c` becomes `*` by the inverse of c)."""
    p, flip = record["p"], {"+": "-", "-": "+"}
    return [
        Step(i, "*", inverse(int(c), p), int(c)) if op == "*" else Step(i, flip[op], int(c))
        for i, (op, c) in reversed(list(enumerate(record["ops"], 1)))
    ]


def _inv_fact(record: dict, step: Step) -> list[str]:
    if step.inverts is None:
        return []
    return [f"{step_tag(record, step.index)}inv {symbol(record, step.inverts)} = {symbol(record, step.c)}"]


def solve_lines(record: dict, var: str, a: int, b: int, known: int) -> list[str]:
    """Lines that solve a*var + b = known for var; returns them ending with the conclusion."""
    p = record["p"]
    diff = (known - b) % p
    a_inv = inverse(a, p)
    value = (diff * a_inv) % p
    s = lambda v: symbol(record, v)  # noqa: E731
    return [
        f"{_map(record, a, var, b)} = {s(known)}",
        f"{s(known)} - {s(b)} = {s(diff)}",
        f"inv {s(a)} = {s(a_inv)}",
        f"{s(diff)} * {s(a_inv)} = {s(value)}",
        f"{var} = {s(value)}",
    ]


def numeric_walk(record: dict, start: int, steps: list[Step]) -> tuple[list[str], int]:
    """Apply the steps numerically, one tagged line each (plus its `inv` fact, if any)."""
    p = record["p"]
    s = lambda v: symbol(record, v)  # noqa: E731
    lines, value = [], start
    for step in steps:
        new = apply_op(step.op, value, step.c, p)
        lines += _inv_fact(record, step)
        lines.append(f"{step_tag(record, step.index)}{s(value)} {step.op} {s(step.c)} = {s(new)}")
        value = new
    return lines, value


def affine_walk(record: dict, var: str, steps: list[Step]) -> tuple[list[str], int, int]:
    """Carry var as a*var+b through the steps, one tagged line each (plus its `inv` fact)."""
    p = record["p"]
    lines, a, b = [], 1, 0
    for step in steps:
        if step.op == "*":
            new_a, new_b = (a * step.c) % p, (b * step.c) % p
        else:
            new_a, new_b = a, apply_op(step.op, b, step.c, p)
        lines += _inv_fact(record, step)
        lines.append(
            f"{step_tag(record, step.index)}{_map(record, a, var, b)} {step.op} {symbol(record, step.c)} = "
            f"{_map(record, new_a, var, new_b)}"
        )
        a, b = new_a, new_b
    return lines, a, b


def forward_trace(record: dict) -> str:
    steps = forward_steps(record)
    if record["kind"] == "evaluation":
        lines, value = numeric_walk(record, record["given"], steps)
        return "\n".join(lines + [f"y = {symbol(record, value)}"])
    lines, a, b = affine_walk(record, "x", steps)
    return "\n".join(lines + solve_lines(record, "x", a, b, record["given"]))


def backward_trace(record: dict) -> str:
    steps = undo_steps(record)
    if record["kind"] == "inversion":
        lines, value = numeric_walk(record, record["given"], steps)
        return "\n".join(lines + [f"x = {symbol(record, value)}"])
    lines, a, b = affine_walk(record, "y", steps)
    return "\n".join(lines + solve_lines(record, "y", a, b, record["given"]))


RENDERERS = {"forward": forward_trace, "backward": backward_trace}


def mixed_strategy(record: dict) -> str:
    """The renderer `mixed` uses for a record: a fixed function of the record id."""
    return ("forward", "backward")[zlib.crc32(str(record["id"]).encode()) % 2]
