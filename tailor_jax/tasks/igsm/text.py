"""iGSM text: problem and question sentences, and the solution writer (step 4 of the
construction in `tailor_jax.tasks.igsm`), plus the template split of a solution."""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping

import numpy as np

from tailor_jax.tasks.igsm.graph import ABSTRACT, INSTANCE, MODULUS, TEST_HASH_CUTOFF, InstanceDef, Ref


def join_names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def mention(ref: Ref) -> str:
    """How a parameter is named in problem sentences."""
    kind, item, other = ref
    return f"each {item}'s {other}" if kind == INSTANCE else f"the total number of {other}s in {item}"


def phrase(ref: Ref) -> str:
    """How a parameter is named in solution sentences ("Define <phrase> as v")."""
    return f"{ref[1]}'s {ref[2]}"


def sentence(ref: Ref, d: InstanceDef) -> str:
    names = [mention(p) for p in d.parents]
    if d.inner == "const":
        inner = str(d.const)
    elif d.inner == "param":
        inner = names[0]
    elif d.inner == "sum":
        inner = "the sum of " + join_names(names)
    else:
        inner = f"the difference of {names[0]} and {names[1]}"
    if d.combine == "add":
        inner = f"{d.const} more than {inner}"
    elif d.combine == "mul":
        inner = f"{d.const} times as much as {inner}"
    return f"The number of {mention(ref)} equals {inner}."


def question_text(ref: Ref) -> str:
    kind, item, other = ref
    if kind == INSTANCE:
        return f"How many {other}s does each {item} have?"
    return f"What is the total number of {other}s in {item}?"


Operand = tuple[str, int]  # (symbol or numeral, value)


class _StepWriter:
    """Writes one solution sentence, naming binary intermediates with fresh letters."""

    def __init__(self, letters: list[str]):
        self.letters = letters
        self.steps: list[str] = []

    def fresh(self) -> str:
        return self.letters.pop()

    def materialize(self, expr: tuple) -> Operand:
        if len(expr) == 2:
            return expr
        (a, av), op, (b, bv) = expr
        value = _apply(av, op, bv)
        letter = self.fresh()
        self.steps.append(f"{letter} = {a} {op} {b} = {av} {op} {bv} = {value}")
        return (letter, value)

    def fold(self, terms: list[Operand], op: str) -> tuple:
        expr: tuple = terms[0]
        for term in terms[1:]:
            expr = (self.materialize(expr), op, term)
        return expr


def _apply(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op] % MODULUS


def _expression(ref: Ref, abstract: Mapping[Ref, tuple[Ref, ...]], defs: Mapping[Ref, InstanceDef],
                symbols: dict[Ref, Operand], writer: _StepWriter) -> tuple:
    if ref[0] == ABSTRACT:
        parents = [symbols[p] for p in abstract[ref]]
        if all(p[0] == INSTANCE for p in abstract[ref]):
            return writer.fold(parents, "+")
        products = [(parents[i], "*", parents[i + 1]) for i in range(0, len(parents), 2)]
        if len(products) == 1:
            return products[0]
        return writer.fold([writer.materialize(p) for p in products], "+")
    d = defs[ref]
    args = [symbols[p] for p in d.parents]
    if d.inner == "const":
        return (str(d.const), d.const)
    expr: tuple = {"param": lambda: args[0], "sum": lambda: writer.fold(args, "+"),
                   "diff": lambda: (args[0], "-", args[1])}[d.inner]()
    if d.combine == "none":
        return expr
    op = "+" if d.combine == "add" else "*"
    return ((str(d.const), d.const), op, writer.materialize(expr))


def write_solution(
    order: list[Ref], abstract: Mapping[Ref, tuple[Ref, ...]], defs: Mapping[Ref, InstanceDef], values: Mapping[Ref, int],
    rng: np.random.Generator,
) -> str:
    """The solution text: one "Define <phrase> as <letter>; ..." sentence per parameter of `order`
    (a topological order of the needed parameters), with letters drawn from `rng`. `abstract`
    maps each abstract parameter to its parents, `defs` each instance parameter to its definition
    and `values` every parameter to its value (checked against each sentence's arithmetic)."""
    letters = [string.ascii_letters[int(i)] for i in rng.permutation(len(string.ascii_letters))]
    symbols: dict[Ref, Operand] = {}
    sentences = []
    for ref in order:
        writer = _StepWriter(letters)
        letter = writer.fresh()
        expr = _expression(ref, abstract, defs, symbols, writer)
        if len(expr) == 2:
            sym, num = expr
            final = f"{letter} = {sym}" if sym == str(num) else f"{letter} = {sym} = {num}"
            value = num
        else:
            (a, av), op, (b, bv) = expr
            value = _apply(av, op, bv)
            final = f"{letter} = {a} {op} {b} = {av} {op} {bv} = {value}"
        if value != values[ref]:
            raise AssertionError(f"iGSM solution writer disagrees with evaluation at {ref}")
        symbols[ref] = (letter, value)
        sentences.append(f"Define {phrase(ref)} as {letter}; " + "; ".join([*writer.steps, "so " + final]) + ".")
    return " ".join(sentences)


def solution_sketch(solution: str) -> str:
    """The solution's template: parameter names, numbers and letters masked (letters become
    v0, v1, ... in order of first appearance), so only sentence forms and dependency shape remain."""
    text = re.sub(r"Define .+? as ", "Define _ as ", solution)
    text = re.sub(r"\b\d+\b", "#", text)
    letters: dict[str, int] = {}
    return re.sub(r"\b[A-Za-z]\b", lambda m: f"v{letters.setdefault(m.group(0), len(letters))}", text)


def template_split(solution: str) -> tuple[str, str]:
    """(template hash, split) of a solution: "test" iff int(sha256[:8], 16) < TEST_HASH_CUTOFF."""
    digest = hashlib.sha256(solution_sketch(solution).encode()).hexdigest()
    return digest[:16], "test" if int(digest[:8], 16) < TEST_HASH_CUTOFF else "train"
