"""iGSM reasoning primitives: programmatic renderers of differently structured solutions, each
with a step checker that re-verifies every claim against the record's graph.

All primitives keep the task's arithmetic sentence form ("Define X's Y as a; b = c + d = 3 + 4
= 7; so a = ..."; every number mod 23); the "Define" sentences are written by the task's own
solution writer (`tasks.igsm.write_solution`) for the order a primitive chooses, with letters drawn
from a generator seeded by the record id and the primitive name (deterministic).

Primitives (docs/primitives-kk-igsm.md has examples):
  forward_topological       the task's own solution (a random topological order)
  backward_decomposition    from the question down: what each needed parameter needs, then
                            compute bottom-up (post-order of that descent)
  dependencies_then_compute a dependency table of every needed parameter in computation order,
                            then the computation in that order
  compute_then_verify       compute, then recompute every value directly from its definition

Every check parses each "Define" sentence and verifies: the name is a parameter of the problem,
letters are fresh and defined before use, every step's symbols carry their values, every
result is the mod-23 arithmetic of its operands, the parameters and constants used are exactly
the definition's, and the value equals the one recomputed from the graph (`solve_graph`). Lists
of dependencies and recomputations are checked against the graph the same way.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tailor_jax.primitives.base import Primitive
from tailor_jax.tasks.igsm import (
    ABSTRACT,
    INSTANCE,
    MODULUS,
    InstanceDef,
    Ref,
    Structure,
    abstract_parameters,
    join_names,
    phrase,
    solve_graph,
    write_solution,
)

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


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


def _dependency_list(problem: Problem, ref: Ref) -> str:
    return join_names([phrase(p) for p in problem.deps(ref)])


def _split_names(text: str) -> list[str]:
    return re.split(r", | and ", text)


# --- the shared "Define" sentence checker -----------------------------------------------------
_DEFINE = re.compile(r"Define (.+?) as ([A-Za-z]); (.+?)\.")
_BINARY = re.compile(r"([A-Za-z]) = (\w+) ([-+*]) (\w+) = (\d+) ([-+*]) (\d+) = (\d+)")
_COPY = re.compile(r"([A-Za-z]) = ([A-Za-z]) = (\d+)")
_CONST = re.compile(r"([A-Za-z]) = (\d+)")


class _Checker:
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
                if result != _OPS[op2](x, y) % MODULUS:
                    self.fail(f"{where}: {x} {op2} {y} is {_OPS[op2](x, y) % MODULUS} mod {MODULUS}, not {result}")
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
            self.fail(f"{where}: uses {_names(used) or 'no parameter'}, but it depends on {_names(problem.deps(ref)) or 'none'}")
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
            self.fail(f"defines parameters the question does not need: {_names(sorted(extra))}")

    def dependency_claim(self, name: str, listed: list[str] | None, constant: int | None, where: str) -> Ref | None:
        """'P needs A, B' (listed) or 'P is given as c' (constant): exactly P's definition."""
        ref = self.ref(name, where)
        if ref is None:
            return None
        deps = self.problem.deps(ref)
        if listed is not None:
            refs = [self.problem.by_phrase.get(x) for x in listed]
            if None in refs or sorted(refs) != sorted(deps):
                self.fail(f"{where}: {name} depends on {_names(deps) or 'nothing'}, not {', '.join(listed)}")
        elif deps or constant != self.problem.constant(ref):
            self.fail(f"{where}: {name} is not the given number {constant}")
        return ref


def _names(refs) -> str:
    return ", ".join(phrase(r) for r in refs)


# --- forward_topological -------------------------------------------------------------------
def render_forward(record: dict) -> str:
    return record["solution"]


def check_forward(record: dict, trace: str) -> list[str]:
    c = _Checker(Problem.of(record))
    c.defines(trace)
    c.answered()
    return c.problems


# --- backward_decomposition ----------------------------------------------------------------
BACKWARD_COMPUTE = "Now compute from the bottom up."
_GOAL = re.compile(r"Goal: (.+)\.")
_NEEDS = re.compile(r"(.+?) needs (.+)\.")
_GIVEN = re.compile(r"(.+?) is given as (\d+)\.")


def render_backward(record: dict) -> str:
    problem = Problem.of(record)
    lines = [f"Goal: {phrase(problem.question)}."]
    for ref in problem.necessary:
        if problem.deps(ref):
            lines.append(f"{phrase(ref)} needs {_dependency_list(problem, ref)}.")
        else:
            lines.append(f"{phrase(ref)} is given as {problem.constant(ref)}.")
    lines.append(BACKWARD_COMPUTE)
    lines.append(problem.define_sentences(problem.post_order(), record["id"] + "/backward"))
    return "\n".join(lines)


def check_backward(record: dict, trace: str) -> list[str]:
    problem = Problem.of(record)
    c = _Checker(problem)
    lines = trace.split("\n")
    if not lines or not (m := _GOAL.fullmatch(lines[0])):
        return ["the trace must open with 'Goal: <the question's parameter>.'"]
    if problem.by_phrase.get(m[1]) != problem.question:
        c.fail(f"the goal {m[1]!r} is not the question's parameter {phrase(problem.question)}")
    if BACKWARD_COMPUTE not in lines:
        return c.problems + ["no computation section"]
    split = lines.index(BACKWARD_COMPUTE)
    wanted, expanded = [problem.question], []
    for k, line in enumerate(lines[1:split], 2):
        where = f"line {k}"
        if g := _GIVEN.fullmatch(line):
            ref = c.dependency_claim(g[1], None, int(g[2]), where)
        elif n := _NEEDS.fullmatch(line):
            ref = c.dependency_claim(n[1], _split_names(n[2]), None, where)
            wanted += [r for r in map(problem.by_phrase.get, _split_names(n[2])) if r is not None]
        else:
            c.fail(f"{where}: unrecognised line {line!r}")
            continue
        if ref is not None:
            if ref not in wanted:
                c.fail(f"{where}: {phrase(ref)} was not yet asked for")
            if ref in expanded:
                c.fail(f"{where}: {phrase(ref)} is broken down twice")
            expanded.append(ref)
    missing = [r for r in dict.fromkeys(wanted) if r not in expanded]
    if missing:
        c.fail(f"never broken down: {_names(missing)}")
    c.defines(" ".join(lines[split + 1 :]))
    c.answered()
    return c.problems


# --- dependencies_then_compute ---------------------------------------------------------------
DEPS_HEADER = "Dependencies of every needed quantity:"
DEPS_COMPUTE = "Compute in this order:"
_USES = re.compile(r"- (.+?): (?:uses (.+)|the given number (\d+))\.")


def render_dependencies(record: dict) -> str:
    problem = Problem.of(record)
    order = problem.level_order()
    lines = [DEPS_HEADER]
    for ref in order:
        if problem.deps(ref):
            lines.append(f"- {phrase(ref)}: uses {_dependency_list(problem, ref)}.")
        else:
            lines.append(f"- {phrase(ref)}: the given number {problem.constant(ref)}.")
    lines.append(DEPS_COMPUTE)
    sentences = problem.define_sentences(order, record["id"] + "/dependencies")
    lines += re.split(r"(?<=\.) (?=Define )", sentences)
    return "\n".join(lines)


def check_dependencies(record: dict, trace: str) -> list[str]:
    problem = Problem.of(record)
    c = _Checker(problem)
    lines = trace.split("\n")
    if not lines or lines[0] != DEPS_HEADER or DEPS_COMPUTE not in lines:
        return ["the trace must list dependencies under its header, then compute"]
    split = lines.index(DEPS_COMPUTE)
    listed: list[Ref] = []
    for k, line in enumerate(lines[1:split], 2):
        u = _USES.fullmatch(line)
        if u is None:
            c.fail(f"line {k}: unrecognised line {line!r}")
            continue
        names = None if u[3] is not None else _split_names(u[2])
        ref = c.dependency_claim(u[1], names, None if u[3] is None else int(u[3]), f"line {k}")
        if ref is not None:
            if any(p not in listed for p in problem.deps(ref)):
                c.fail(f"line {k}: {u[1]} is listed before what it uses")
            listed.append(ref)
    if sorted(listed) != sorted(problem.necessary):
        c.fail("the table does not list exactly the needed quantities, once each")
    c.defines(" ".join(lines[split + 1 :]))
    order = [ref for ref in c.symbols]
    if order != [r for r in listed if r in c.symbols]:
        c.fail("the computation does not follow the listed order")
    c.answered()
    return c.problems


# --- compute_then_verify -----------------------------------------------------------------------
VERIFY_HEADER = "Verify each value against its definition:"
_CHECK = re.compile(r"Check (.+?) = ([0-9 +*()-]+?)(?: = (\d+)|, as given): matches ([A-Za-z])\.")


def recomputation(problem: Problem, ref: Ref) -> str:
    """The definition written with the parents' values, e.g. '5 * (3 + 4)' or '2 * 3 + 4 * 5'."""
    vals = [str(problem.values[p]) for p in problem.deps(ref)]
    if ref[0] == ABSTRACT:
        if all(p[0] == INSTANCE for p in problem.deps(ref)):
            return " + ".join(vals)
        return " + ".join(f"{vals[i]} * {vals[i + 1]}" for i in range(0, len(vals), 2))
    d = problem.defs[ref]
    if d.inner == "const":
        return str(d.const)
    inner = {"param": lambda: vals[0], "sum": lambda: " + ".join(vals), "diff": lambda: f"{vals[0]} - {vals[1]}"}[d.inner]()
    if d.combine == "none":
        return inner
    op = "+" if d.combine == "add" else "*"
    return f"{d.const} {op} {inner}" if d.inner == "param" else f"{d.const} {op} ({inner})"


def evaluate_arithmetic(text: str) -> int | None:
    """Value of an expression of non-negative integers, + - * and parentheses (None if malformed)."""
    tokens = re.findall(r"\d+|[-+*()]|\S", text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> int:
        token = take()
        if token == "(":
            value = expr()
            if take() != ")":
                raise ValueError
            return value
        if not token.isdigit():
            raise ValueError
        return int(token)

    def term() -> int:
        value = atom()
        while peek() == "*":
            take()
            value *= atom()
        return value

    def expr() -> int:
        value = term()
        while peek() in ("+", "-"):
            value = _OPS[take()](value, term())
        return value

    try:
        value = expr()
        return value if pos == len(tokens) else None
    except (ValueError, IndexError):
        return None


def render_compute_verify(record: dict) -> str:
    problem = Problem.of(record)
    order = _kahn_reverse_names(problem)
    sentences = problem.define_sentences(order, record["id"] + "/verify")
    letters = dict(re.findall(r"Define (.+?) as ([A-Za-z]);", sentences))
    lines = [sentences, VERIFY_HEADER]
    for ref in order:
        value = problem.values[ref]
        shown = f"{recomputation(problem, ref)} = {value}" if problem.deps(ref) else f"{value}, as given"
        lines.append(f"Check {phrase(ref)} = {shown}: matches {letters[phrase(ref)]}.")
    return "\n".join(lines)


def _kahn_reverse_names(problem: Problem) -> list[Ref]:
    """A topological order taking, at each step, the ready parameter whose name sorts last."""
    done: list[Ref] = []
    while len(done) < len(problem.necessary):
        ready = [r for r in problem.necessary if r not in done and all(p in done for p in problem.deps(r))]
        done.append(max(ready, key=phrase))
    return done


def check_compute_verify(record: dict, trace: str) -> list[str]:
    problem = Problem.of(record)
    c = _Checker(problem)
    lines = trace.split("\n")
    if VERIFY_HEADER not in lines:
        return ["no verification section"]
    split = lines.index(VERIFY_HEADER)
    c.defines(" ".join(lines[:split]))
    c.answered()
    verified: list[Ref] = []
    for k, line in enumerate(lines[split + 1 :], split + 2):
        m = _CHECK.fullmatch(line)
        if m is None:
            c.fail(f"line {k}: unrecognised line {line!r}")
            continue
        ref = c.ref(m[1], f"line {k}")
        if ref is None:
            continue
        value = evaluate_arithmetic(m[2])
        stated = int(m[3]) if m[3] is not None else value
        if m[3] is None and problem.deps(ref):
            c.fail(f"line {k}: {m[1]} is not a given number")
        if value is None or stated is None or value % MODULUS != stated:
            c.fail(f"line {k}: {m[2]} is {value if value is None else value % MODULUS} mod {MODULUS}, not {stated}")
        if m[2] != recomputation(problem, ref):
            c.fail(f"line {k}: the check of {m[1]} does not use its definition with the right values")
        if stated != problem.values[ref]:
            c.fail(f"line {k}: {m[1]} is {problem.values[ref]}, not {stated}")
        if c.symbols.get(ref) != m[4] or c.letters.get(m[4]) != stated:
            c.fail(f"line {k}: {m[4]} is not the letter of {m[1]} with value {stated}")
        verified.append(ref)
    if sorted(verified) != sorted(c.symbols):
        c.fail("not every computed value is verified exactly once")
    return c.problems


# --- the library ---------------------------------------------------------------------------
def _primitive(name: str, description: str, tags: set[str], render: Callable, check: Callable) -> Primitive:
    return Primitive(name, "igsm", description, frozenset(tags), render, check)


FORWARD_TOPOLOGICAL = _primitive(
    "forward_topological",
    "Compute forward: define each needed quantity only after everything it depends on, one sentence "
    "each, with every arithmetic step written out mod 23, ending with the asked quantity.",
    {"forward"},
    render_forward, check_forward,
)
BACKWARD_DECOMPOSITION = _primitive(
    "backward_decomposition",
    "Start from the question: say what the asked quantity needs, then what each of those needs, down "
    "to given numbers; then compute from the bottom up, every step mod 23.",
    {"backward_chaining", "decomposition", "subgoal"},
    render_backward, check_backward,
)
DEPENDENCIES_THEN_COMPUTE = _primitive(
    "dependencies_then_compute",
    "First write a table of every quantity the question needs and what each one uses, simplest first; "
    "then compute them in that order, every step mod 23.",
    {"decomposition", "forward", "subgoal"},
    render_dependencies, check_dependencies,
)
COMPUTE_THEN_VERIFY = _primitive(
    "compute_then_verify",
    "Compute every needed quantity forward, mod 23; then verify each value by recomputing it directly "
    "from its definition with the values found, and confirm it matches.",
    {"forward", "verification"},
    render_compute_verify, check_compute_verify,
)

LIBRARY: dict[str, Primitive] = {
    p.name: p for p in (FORWARD_TOPOLOGICAL, BACKWARD_DECOMPOSITION, DEPENDENCIES_THEN_COMPUTE, COMPUTE_THEN_VERIFY)
}
