"""What every iGSM primitive shares: the problem as renderers and checkers see it (the graph,
needed parameters, orders, the task's solution writer) and the checker of "Define" sentences."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tailor_jax.tasks.igsm import (
    ABSTRACT, INSTANCE, MODULUS, InstanceDef, Ref, Structure, abstract_parameters, join_names, phrase, solve_graph,
    write_solution,
)


OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


# --- the problem as the renderers and checkers see it --------------------------------------
@dataclass(frozen=True)
class Problem:
    graph: dict

    @staticmethod
    def of(record: dict) -> "Problem":
        return Problem(record["graph"])

    @cached_property
    def abstract(self) -> dict[Ref, tuple[Ref, ...]]:
        g = self.graph
        structure = Structure(
            g["hierarchy"], tuple(g["categories"]), tuple(tuple(layer) for layer in g["layers"]),
            tuple(tuple(edge) for edge in g["edges"]),
        )  # fmt: skip
        return abstract_parameters(structure)

    @cached_property
    def defs(self) -> dict[Ref, InstanceDef]:
        return {
            (INSTANCE, d["item"], d["of"]): InstanceDef(
                tuple(tuple(p) for p in d["parents"]), d["inner"], d["combine"], d["const"]
            )
            for d in self.graph["params"]
        }

    @property
    def question(self) -> Ref:
        return tuple(self.graph["question"])

    def deps(self, ref: Ref) -> tuple[Ref, ...]:
        return self.abstract[ref] if ref[0] == ABSTRACT else self.defs[ref].parents

    def constant(self, ref: Ref) -> int | None:
        return None if ref[0] == ABSTRACT else self.defs[ref].const

    @cached_property
    def by_phrase(self) -> dict[str, Ref]:
        return {phrase(ref): ref for ref in [*self.defs, *self.abstract]}

    @cached_property
    def values(self) -> dict[Ref, int]:
        """Every parameter's value, each recomputed by the task's independent solver."""
        return {ref: solve_graph({**self.graph, "question": list(ref)}) for ref in self.by_phrase.values()}

    @cached_property
    def necessary(self) -> list[Ref]:
        """The question's dependencies, depth-first from the question (pre-order, each once)."""
        out: dict[Ref, None] = {}

        def visit(ref: Ref) -> None:
            if ref not in out:
                out[ref] = None
                for parent in self.deps(ref):
                    visit(parent)

        visit(self.question)
        return list(out)

    def post_order(self) -> list[Ref]:
        """Dependencies before dependants, in the order a descent from the question finishes them."""
        out: dict[Ref, None] = {}

        def visit(ref: Ref) -> None:
            if ref not in out:
                for parent in self.deps(ref):
                    visit(parent)
                out[ref] = None

        visit(self.question)
        return list(out)

    def level_order(self) -> list[Ref]:
        """Dependencies first, grouped by height (longest path down to a given number), then by name."""
        height: dict[Ref, int] = {}

        def h(ref: Ref) -> int:
            if ref not in height:
                height[ref] = 1 + max((h(p) for p in self.deps(ref)), default=-1)
            return height[ref]

        return sorted(self.necessary, key=lambda ref: (h(ref), phrase(ref)))

    def define_sentences(self, order: list[Ref], seed_text: str) -> str:
        """The task's solution sentences for `order` (a topological order of needed parameters)."""
        rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
        return write_solution(order, self.abstract, self.defs, self.values, rng)


def dependency_list(problem: Problem, ref: Ref) -> str:
    return join_names([phrase(p) for p in problem.deps(ref)])


def split_names(text: str) -> list[str]:
    return re.split(r", | and ", text)


# --- the shared "Define" sentence checker -----------------------------------------------------
_DEFINE = re.compile(r"Define (.+?) as ([A-Za-z]); (.+?)\.")
_BINARY = re.compile(r"([A-Za-z]) = (\w+) ([-+*]) (\w+) = (\d+) ([-+*]) (\d+) = (\d+)")
_COPY = re.compile(r"([A-Za-z]) = ([A-Za-z]) = (\d+)")
_CONST = re.compile(r"([A-Za-z]) = (\d+)")


class Checker:
    def __init__(self, problem: Problem):
        self.problem = problem
        self.problems: list[str] = []
        self.letters: dict[str, int] = {}  # every letter defined so far -> value
        self.symbols: dict[Ref, str] = {}  # parameter -> its letter

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def ref(self, name: str, where: str) -> Ref | None:
        ref = self.problem.by_phrase.get(name)
        if ref is None:
            self.fail(f"{where}: {name!r} is not a parameter of this problem")
        return ref

    def define(self, sentence: str) -> None:
        """Verify one 'Define P as L; ...; so L = ...' sentence and record L."""
        m = _DEFINE.fullmatch(sentence)
        if m is None:
            self.fail(f"unreadable sentence {sentence!r}")
            return
        where = f"definition of {m[1]}"
        ref, letter = self.ref(m[1], where), m[2]
        if ref is None:
            return
        if ref in self.symbols:
            self.fail(f"{where}: defined twice")
        if letter in self.letters:
            self.fail(f"{where}: letter {letter} is already in use")
        steps = m[3].split("; ")
        if not steps[-1].startswith("so "):
            self.fail(f"{where}: the last step must start with 'so'")
            return
        local: dict[str, int] = {}
        used: list[Ref] = []
        constants: list[int] = []
        letter_refs = {v: k for k, v in self.symbols.items()}

        def operand(token: str, stated: int, step: str) -> None:
            if token.isdigit():
                constants.append(int(token))
                value = int(token)
            elif token in local:
                value = local.pop(token)
            elif token in letter_refs:
                used.append(letter_refs[token])
                value = self.letters[token]
            else:
                self.fail(f"{where}: {token} is used before it is defined ({step!r})")
                return
            if value != stated:
                self.fail(f"{where}: {token} is {value}, not {stated} ({step!r})")

        result = None
        for k, step in enumerate(steps):
            final = k == len(steps) - 1
            body = step[3:] if final else step
            if b := _BINARY.fullmatch(body):
                target, a, op, c, x, op2, y, result = b[1], b[2], b[3], b[4], int(b[5]), b[6], int(b[7]), int(b[8])
                if op != op2:
                    self.fail(f"{where}: the operator changes within {step!r}")
                operand(a, x, step)
                operand(c, y, step)
                if result != OPS[op2](x, y) % MODULUS:
                    self.fail(f"{where}: {x} {op2} {y} is {OPS[op2](x, y) % MODULUS} mod {MODULUS}, not {result}")
            elif final and (b := _COPY.fullmatch(body)):
                target, result = b[1], int(b[3])
                operand(b[2], result, step)
            elif final and (b := _CONST.fullmatch(body)):
                target, result = b[1], int(b[2])
                operand(b[2], result, step)
            else:
                self.fail(f"{where}: unreadable step {step!r}")
                return
            if not 0 <= result < MODULUS:
                self.fail(f"{where}: {result} is not a number mod {MODULUS}")
            if final:
                if target != letter:
                    self.fail(f"{where}: the last step assigns {target}, not {letter}")
            elif target in self.letters or target in local or target == letter:
                self.fail(f"{where}: intermediate letter {target} is already in use")
            else:
                local[target] = result
        if local:
            self.fail(f"{where}: {', '.join(sorted(local))} computed but never used")
        problem = self.problem
        if sorted(used) != sorted(problem.deps(ref)):
            self.fail(f"{where}: uses {phrase_list(used) or 'no parameter'}, but it depends on {phrase_list(problem.deps(ref)) or 'none'}")
        expected_constants = [] if problem.constant(ref) is None else [problem.constant(ref)]
        if constants != expected_constants:
            self.fail(f"{where}: uses the numbers {constants}, but its definition has {expected_constants}")
        if result != problem.values[ref]:
            self.fail(f"{where}: gives {result}, but {m[1]} is {problem.values[ref]}")
        self.letters[letter] = result
        self.symbols[ref] = letter

    def defines(self, paragraph: str) -> None:
        for sentence in re.split(r"(?<=\.) (?=Define )", paragraph.strip()):
            self.define(sentence)

    def answered(self) -> None:
        """The question's parameter was defined, and nothing that is not needed."""
        problem = self.problem
        if problem.question not in self.symbols:
            self.fail(f"the question's parameter {phrase(problem.question)} is never defined")
        extra = set(self.symbols) - set(problem.necessary)
        if extra:
            self.fail(f"defines parameters the question does not need: {phrase_list(sorted(extra))}")

    def dependency_claim(self, name: str, listed: list[str] | None, constant: int | None, where: str) -> Ref | None:
        """'P needs A, B' (listed) or 'P is given as c' (constant): exactly P's definition."""
        ref = self.ref(name, where)
        if ref is None:
            return None
        deps = self.problem.deps(ref)
        if listed is not None:
            refs = [self.problem.by_phrase.get(x) for x in listed]
            if None in refs or sorted(refs) != sorted(deps):
                self.fail(f"{where}: {name} depends on {phrase_list(deps) or 'nothing'}, not {', '.join(listed)}")
        elif deps or constant != self.problem.constant(ref):
            self.fail(f"{where}: {name} is not the given number {constant}")
        return ref


def phrase_list(refs) -> str:
    return ", ".join(phrase(r) for r in refs)
