"""iGSM: synthetic grade-school math after Ye, Xu, Li and Allen-Zhu 2024 ("Physics of Language
Models: Part 2.1"). See docs/tasks-igsm.md for the construction and what differs from the paper.

A problem is built in four steps, all from one numpy stream per record:

1. Structure graph: d in {2, 3, 4} layers, a consecutive slice of one of four 4-level hierarchies
   (`igsm_names.py`), 2..4 items per layer, edges only between adjacent layers, every lower item
   with at least one parent, e edges in total (op <= e <= the preset's max_edge).
2. Parameters: one instance parameter per edge ("each X's Y") and the abstract parameters
   ("the total number of Ks in X"), whose value is fixed by the structure: the sum of X's K items
   when K is the next layer, else the sum over X's children C of (X's C) * (C's K total).
3. Dependency graph, grown backwards from the question: every necessary instance parameter gets
   at most 4 parents (earlier parameters and the random-constant source), sampled so that the
   total op count (each parameter costs max(1, in-degree - 1), constant source included) reaches
   `op` exactly; the other instance parameters become distractors with random dependencies.
   Draws that miss `op` are retried (bounded).
4. Text: one sentence per instance parameter, shuffled, question last; the solution defines the
   necessary parameters in a random topological order, one sentence each, all arithmetic mod 23.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import Task, parse_level_range
from tailor_jax.tasks.igsm_names import HIERARCHIES

MODULUS = 23
MAX_PARENTS = 4  # in-degree limit of an instance parameter, constant source included
MIN_ITEMS, MAX_ITEMS = 2, 4  # items per layer
SPLITS = ("train", "test")
# Template split: a record is "test" iff the first 8 hex digits of sha256(solution_sketch)
# read as an integer are below this cutoff (ceil(0.1 * 2**32), about 10% of templates).
TEST_HASH_CUTOFF = 429_496_730
MAX_GRAPH_ATTEMPTS = 200  # structure + dependency draws per record before giving up
MAX_SPLIT_DRAWS = 300  # problems drawn per record when only one split is wanted
MAX_CHOICE_TRIES = 24  # random parent-set proposals per parameter

INSTANCE, ABSTRACT = "instance", "abstract"
Ref = tuple[str, str, str]  # (INSTANCE, item, child item) or (ABSTRACT, item, category)


@dataclass(frozen=True)
class Preset:
    name: str
    max_op: int
    max_edge: int


PRESETS = {"med": Preset("med", 15, 20), "hard": Preset("hard", 21, 28)}


@dataclass(frozen=True)
class InstanceDef:
    """How an instance parameter is computed from its parents.

    inner: "const" (no parents), "param" (one parent), "sum" (2+ parents), "diff" (p0 - p1);
    combine: "none", "add" (const + inner) or "mul" (const * inner). `const` is set exactly when
    the random-constant source is a parent (inner == "const" or combine != "none").
    """

    parents: tuple[Ref, ...]
    inner: str
    combine: str
    const: int | None

    @property
    def in_degree(self) -> int:
        return len(self.parents) + (self.const is not None)


@dataclass(frozen=True)
class Structure:
    hierarchy: str
    categories: tuple[str, ...]
    layers: tuple[tuple[str, ...], ...]
    edges: tuple[tuple[str, str], ...]  # (upper item, lower item), sorted by layer and position


def op_count(in_degree: int) -> int:
    return max(1, in_degree - 1)


# --- structure graph -------------------------------------------------------------------
def sample_structure(rng: np.random.Generator, preset: Preset, op: int) -> Structure | None:
    """A random structure graph with op <= e <= max_edge edges, or None if the draw cannot fit."""
    names = list(HIERARCHIES)
    hierarchy = names[int(rng.integers(len(names)))]
    depth = int(rng.integers(2, 5))
    top = int(rng.integers(0, 4 - depth + 1))
    levels = HIERARCHIES[hierarchy][top : top + depth]
    sizes = [int(s) for s in rng.integers(MIN_ITEMS, MAX_ITEMS + 1, size=depth)]
    min_edges = sum(sizes[1:])
    max_edges = min(sum(a * b for a, b in zip(sizes, sizes[1:])), preset.max_edge)
    low = max(min_edges, op)
    if low > max_edges:
        return None
    num_edges = int(rng.integers(low, max_edges + 1))
    layers = tuple(
        tuple(items[int(i)] for i in rng.choice(len(items), size, replace=False))
        for (_, items), size in zip(levels, sizes)
    )
    edges = set()
    for upper, lower in zip(layers, layers[1:]):
        for child in lower:
            edges.add((upper[int(rng.integers(len(upper)))], child))
    spare = [(x, y) for upper, lower in zip(layers, layers[1:]) for x in upper for y in lower if (x, y) not in edges]
    for i in rng.choice(len(spare), num_edges - len(edges), replace=False):
        edges.add(spare[int(i)])
    position = {item: (depth_i, j) for depth_i, layer in enumerate(layers) for j, item in enumerate(layer)}
    ordered = tuple(sorted(edges, key=lambda edge: (position[edge[0]], position[edge[1]])))
    return Structure(hierarchy, tuple(name for name, _ in levels), layers, ordered)


def abstract_parameters(structure: Structure) -> dict[Ref, tuple[Ref, ...]]:
    """Every abstract parameter (item, lower category) with a path down, and its parents:
    (X's z ...) for the next layer, else alternating (X's C, C's K total) per child C."""
    children: dict[str, list[str]] = {item: [] for layer in structure.layers for item in layer}
    for x, y in structure.edges:
        children[x].append(y)
    result: dict[Ref, tuple[Ref, ...]] = {}
    for j in range(1, len(structure.layers)):
        category = structure.categories[j]
        for i in range(j - 1, -1, -1):
            for x in structure.layers[i]:
                if i == j - 1:
                    parents = tuple((INSTANCE, x, z) for z in children[x])
                else:
                    parents = tuple(
                        ref
                        for c in children[x]
                        if (ABSTRACT, c, category) in result
                        for ref in ((INSTANCE, x, c), (ABSTRACT, c, category))
                    )
                if parents:
                    result[(ABSTRACT, x, category)] = parents
    return result


# --- dependency graph --------------------------------------------------------------------
class _GraphBuilder:
    """Grows the dependency graph of one problem (stateful shell around small random choices)."""

    def __init__(self, structure: Structure, rng: np.random.Generator):
        self.rng = rng
        self.abstract = abstract_parameters(structure)
        self.instances: list[Ref] = [(INSTANCE, x, y) for x, y in structure.edges]
        self.defs: dict[Ref, InstanceDef] = {}
        self.closure = {a: self._structural_closure(a) for a in self.abstract}
        # Dicts (insertion-ordered), never sets, wherever iteration order feeds a random choice.
        self.necessary: dict[Ref, None] = {}
        self.queue: list[Ref] = []
        self.total = 0

    def _structural_closure(self, ref: Ref) -> tuple[Ref, ...]:
        out: dict[Ref, None] = {}
        stack = list(self.abstract[ref])
        while stack:
            r = stack.pop()
            if r not in out:
                out[r] = None
                if r[0] == ABSTRACT:
                    stack.extend(self.abstract[r])
        return tuple(out)

    def deps(self, ref: Ref) -> tuple[Ref, ...]:
        if ref[0] == ABSTRACT:
            return self.abstract[ref]
        d = self.defs.get(ref)
        return d.parents if d is not None else ()

    def depends_on(self, start: Ref, target: Ref) -> bool:
        """Whether `start` is `target` or (transitively) depends on it."""
        stack, seen = [start], set()
        while stack:
            r = stack.pop()
            if r == target:
                return True
            if r not in seen:
                seen.add(r)
                stack.extend(self.deps(r))
        return False

    def _unit_cost(self, ref: Ref) -> int:
        # An instance parameter not yet expanded counts as a leaf ("equals N", 1 op).
        return 1 if ref[0] == INSTANCE else op_count(len(self.abstract[ref]))

    def _new_nodes(self, refs: list[Ref]) -> dict[Ref, None]:
        out: dict[Ref, None] = {}
        for ref in refs:
            for r in (ref, *self.closure.get(ref, ())):
                if r not in self.necessary:
                    out[r] = None
        return out

    def _add(self, ref: Ref) -> None:
        for r in self._new_nodes([ref]):
            self.necessary[r] = None
            self.total += self._unit_cost(r)
            if r[0] == INSTANCE:
                self.queue.append(r)

    def _pick_question(self, op: int) -> Ref | None:
        affordable = [a for a in self.abstract if sum(self._unit_cost(r) for r in (a, *self.closure[a])) <= op]
        if affordable and self.rng.random() < 0.5:
            return affordable[int(self.rng.integers(len(affordable)))]
        return self.instances[int(self.rng.integers(len(self.instances)))]

    def _first_safe(self, candidates: list[Ref], child: Ref) -> Ref | None:
        for i in self.rng.permutation(len(candidates)):
            if not self.depends_on(candidates[int(i)], child):
                return candidates[int(i)]
        return None

    def _pick_parent(self, child: Ref, chosen: list[Ref], pool: str) -> Ref | None:
        if pool == "existing":
            candidates = [r for r in self.necessary if r != child and r not in chosen]
        elif pool == "new_instance":
            candidates = [r for r in self.instances if r not in self.necessary and r not in chosen]
        else:
            candidates = [r for r in self.abstract if r not in self.necessary and r not in chosen]
        return self._first_safe(candidates, child)

    def _propose_parents(self, child: Ref, k: int, allow_new: bool) -> list[Ref] | None:
        chosen: list[Ref] = []
        for _ in range(k):
            if allow_new:
                first = ("existing", "new_instance", "new_abstract")[
                    int(self.rng.choice(3, p=(0.35, 0.5, 0.15)))
                ]
                pools = [first] + [p for p in ("new_instance", "existing", "new_abstract") if p != first]
            else:
                pools = ["existing"]
            for pool in pools:
                parent = self._pick_parent(child, chosen, pool)
                if parent is not None:
                    chosen.append(parent)
                    break
            else:
                return None
        return chosen

    def _make_def(self, parents: list[Ref], use_const: bool) -> InstanceDef:
        rng = self.rng
        k = len(parents)
        if k == 0:
            return InstanceDef((), "const", "none", int(rng.integers(0, MODULUS)))
        if k == 1:
            inner = "param"
        else:
            inner = "diff" if k == 2 and rng.random() < 0.5 else "sum"
        if not use_const:
            return InstanceDef(tuple(parents), inner, "none", None)
        if rng.random() < 0.5:
            return InstanceDef(tuple(parents), inner, "add", int(rng.integers(1, MODULUS)))
        return InstanceDef(tuple(parents), inner, "mul", int(rng.integers(2, MODULUS)))

    def _sample_shape(self, weights: tuple[float, ...]) -> tuple[int, bool]:
        k = int(self.rng.choice(len(weights), p=weights))
        use_const = k == 0 or (k < MAX_PARENTS and self.rng.random() < 0.5)
        return k, use_const

    def _choose_def(self, child: Ref, budget: int, last: bool) -> InstanceDef:
        """A definition for `child` adding at most `budget` ops; when it is the last queued
        parameter and ops are still missing, it must add either exactly the rest or new work."""
        weights = (0.15, 0.4, 0.3, 0.1, 0.05) if budget > 0 else (0.5, 0.35, 0.15)
        for _ in range(MAX_CHOICE_TRIES):
            k, use_const = self._sample_shape(weights)
            own = op_count(k + use_const)
            if own - 1 > budget:
                continue
            parents = self._propose_parents(child, k, allow_new=budget > 0)
            if parents is None:
                continue
            new = self._new_nodes(parents)
            delta = own - 1 + sum(self._unit_cost(r) for r in new)
            if delta > budget:
                continue
            if last and 0 < budget != delta and not any(r[0] == INSTANCE for r in new):
                continue
            return self._make_def(parents, use_const)
        return self._make_def([], True)

    def grow(self, op: int) -> Ref | None:
        """Grow the necessary parameters backwards from a question; None if `op` was missed."""
        question = self._pick_question(op)
        self._add(question)
        while self.queue:
            child = self.queue.pop(int(self.rng.integers(len(self.queue))))
            d = self._choose_def(child, op - self.total, last=not self.queue)
            self.defs[child] = d
            self.total += op_count(d.in_degree) - 1
            for parent in d.parents:
                self._add(parent)
        return question if self.total == op else None

    def add_distractors(self) -> None:
        others = [r for r in self.instances if r not in self.defs]
        pool = self.instances + list(self.abstract)
        for i in self.rng.permutation(len(others)):
            child = others[int(i)]
            k, use_const = self._sample_shape((0.3, 0.35, 0.25, 0.1))
            parents: list[Ref] = []
            for _ in range(k):
                candidates = [r for r in pool if r != child and r not in parents]
                parent = self._first_safe(candidates, child)
                if parent is not None:
                    parents.append(parent)
            self.defs[child] = self._make_def(parents, use_const or not parents)


# --- evaluation and text -----------------------------------------------------------------
def _instance_value(d: InstanceDef, args: list[int]) -> int:
    if d.inner == "const":
        return d.const % MODULUS
    if d.inner == "param":
        base = args[0]
    elif d.inner == "sum":
        base = sum(args)
    else:
        base = args[0] - args[1]
    if d.combine == "add":
        base = d.const + base
    elif d.combine == "mul":
        base = d.const * base
    return base % MODULUS


def _evaluate(builder: _GraphBuilder) -> dict[Ref, int]:
    values: dict[Ref, int] = {}

    def value(ref: Ref) -> int:
        if ref in values:
            return values[ref]
        if ref[0] == ABSTRACT:
            parents = builder.abstract[ref]
            if all(p[0] == INSTANCE for p in parents):
                v = sum(value(p) for p in parents)
            else:
                v = sum(value(parents[i]) * value(parents[i + 1]) for i in range(0, len(parents), 2))
        else:
            d = builder.defs[ref]
            v = _instance_value(d, [value(p) for p in d.parents])
        values[ref] = v % MODULUS
        return values[ref]

    for ref in [*builder.instances, *builder.abstract]:
        value(ref)
    return values


def _ancestors(builder: _GraphBuilder, ref: Ref) -> dict[Ref, None]:
    out: dict[Ref, None] = {}
    stack = [ref]
    while stack:
        r = stack.pop()
        if r not in out:
            out[r] = None
            stack.extend(builder.deps(r))
    return out


def _topological_order(nodes: list[Ref], builder: _GraphBuilder, rng: np.random.Generator) -> list[Ref]:
    """A uniformly chosen ready node at each step (Kahn's algorithm)."""
    waiting = {n: {p for p in builder.deps(n)} for n in nodes}
    order: list[Ref] = []
    done: set[Ref] = set()
    while len(order) < len(nodes):
        ready = [n for n in nodes if n not in done and waiting[n] <= done]
        pick = ready[int(rng.integers(len(ready)))]
        order.append(pick)
        done.add(pick)
    return order


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def mention(ref: Ref) -> str:
    """How a parameter is named in problem sentences."""
    kind, item, other = ref
    return f"each {item}'s {other}" if kind == INSTANCE else f"the total number of {other}s in {item}"


def phrase(ref: Ref) -> str:
    """How a parameter is named in solution sentences ("Define <phrase> as v")."""
    return f"{ref[1]}'s {ref[2]}"


def _sentence(ref: Ref, d: InstanceDef) -> str:
    names = [mention(p) for p in d.parents]
    if d.inner == "const":
        inner = str(d.const)
    elif d.inner == "param":
        inner = names[0]
    elif d.inner == "sum":
        inner = "the sum of " + _join(names)
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


def _expression(ref: Ref, builder: _GraphBuilder, symbols: dict[Ref, Operand], writer: _StepWriter) -> tuple:
    if ref[0] == ABSTRACT:
        parents = [symbols[p] for p in builder.abstract[ref]]
        if all(p[0] == INSTANCE for p in builder.abstract[ref]):
            return writer.fold(parents, "+")
        products = [(parents[i], "*", parents[i + 1]) for i in range(0, len(parents), 2)]
        if len(products) == 1:
            return products[0]
        return writer.fold([writer.materialize(p) for p in products], "+")
    d = builder.defs[ref]
    args = [symbols[p] for p in d.parents]
    if d.inner == "const":
        return (str(d.const), d.const)
    expr: tuple = {"param": lambda: args[0], "sum": lambda: writer.fold(args, "+"),
                   "diff": lambda: (args[0], "-", args[1])}[d.inner]()
    if d.combine == "none":
        return expr
    op = "+" if d.combine == "add" else "*"
    return ((str(d.const), d.const), op, writer.materialize(expr))


def _solution(order: list[Ref], builder: _GraphBuilder, values: dict[Ref, int], rng: np.random.Generator) -> str:
    letters = [string.ascii_letters[int(i)] for i in rng.permutation(len(string.ascii_letters))]
    symbols: dict[Ref, Operand] = {}
    sentences = []
    for ref in order:
        writer = _StepWriter(letters)
        letter = writer.fresh()
        expr = _expression(ref, builder, symbols, writer)
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


def _defs_json(builder: _GraphBuilder) -> list[dict]:
    out = []
    for ref in builder.instances:
        d = builder.defs[ref]
        out.append({"item": ref[1], "of": ref[2], "inner": d.inner, "combine": d.combine, "const": d.const,
                    "parents": [list(p) for p in d.parents]})
    return out


def build_problem(rng: np.random.Generator, op: int, preset: Preset, record_id: str) -> dict:
    """One record with exactly `op` operations (TailorError after MAX_GRAPH_ATTEMPTS misses)."""
    for _ in range(MAX_GRAPH_ATTEMPTS):
        structure = sample_structure(rng, preset, op)
        if structure is None:
            continue
        builder = _GraphBuilder(structure, rng)
        question = builder.grow(op)
        if question is None:
            continue
        builder.add_distractors()
        necessary = list(_ancestors(builder, question))
        realised = sum(
            op_count(len(builder.abstract[r]) if r[0] == ABSTRACT else builder.defs[r].in_degree) for r in necessary
        )
        if realised != op:
            continue
        values = _evaluate(builder)
        order = _topological_order(necessary, builder, rng)
        solution = _solution(order, builder, values, rng)
        sentences = [_sentence(ref, builder.defs[ref]) for ref in builder.instances]
        problem = " ".join(sentences[int(i)] for i in rng.permutation(len(sentences)))
        template, split = template_split(solution)
        graph = {
            "modulus": MODULUS,
            "preset": preset.name,
            "hierarchy": structure.hierarchy,
            "categories": list(structure.categories),
            "layers": [list(layer) for layer in structure.layers],
            "edges": [list(edge) for edge in structure.edges],
            "params": _defs_json(builder),
            "question": list(question),
            "template": template,
        }
        return {
            "task": "igsm",
            "id": record_id,
            "op": op,
            "problem": problem,
            "question": question_text(question),
            "solution": solution,
            "answer": values[question],
            "graph": graph,
            "split": split,
        }
    raise TailorError(
        f"could not build an iGSM problem with exactly op={op} in {MAX_GRAPH_ATTEMPTS} draws "
        f"(preset {preset.name}); use a smaller op or the hard preset"
    )


# --- independent solver ------------------------------------------------------------------
def solve_graph(graph: dict) -> int:
    """Recompute the question's value from the JSON graph alone (shares no code with the
    generator): an abstract count K in X is the sum over X's children C that lead down to the
    K layer of (X's C) times (1 if C is a K, else C's K total)."""
    p = graph["modulus"]
    layer_of = {item: i for i, layer in enumerate(graph["layers"]) for item in layer}
    children: dict[str, list[str]] = {}
    for x, y in graph["edges"]:
        children.setdefault(x, []).append(y)
    defs = {(d["item"], d["of"]): d for d in graph["params"]}
    memo: dict[tuple, int] = {}
    active: set[tuple] = set()

    def reaches(item: str, level: int) -> bool:
        # A child with no descendants in the asked layer holds none of them: its count is
        # structurally 0, so it is not a dependency (problems may make it depend on the total).
        return layer_of[item] == level or any(reaches(c, level) for c in children.get(item, []))

    def value(ref: tuple) -> int:
        ref = tuple(ref)
        if ref in memo:
            return memo[ref]
        if ref in active:
            raise TailorError(f"igsm graph has a dependency cycle through {ref}; regenerate the record")
        active.add(ref)
        kind, item, other = ref
        if kind == INSTANCE:
            d = defs[(item, other)]
            args = [value(q) for q in d["parents"]]
            inner, combine, c = d["inner"], d["combine"], d["const"]
            if inner == "const":
                result = c
            else:
                result = {"param": lambda: args[0], "sum": lambda: sum(args), "diff": lambda: args[0] - args[1]}[inner]()
                if combine == "add":
                    result = c + result
                elif combine == "mul":
                    result = c * result
        else:
            level = graph["categories"].index(other)
            result = sum(
                value((INSTANCE, item, c)) * (1 if layer_of[c] == level else value((ABSTRACT, c, other)))
                for c in children.get(item, [])
                if reaches(c, level)
            )
        active.discard(ref)
        memo[ref] = result % p
        return memo[ref]

    return value(tuple(graph["question"]))


_ANSWER = re.compile(r"[0-9]{1,6}")


class IGSM(Task):
    """iGSM problems with an exact operation count. Options: op (k or "lo-hi", uniform per
    record; default 1..max_op), preset ("med" or "hard"), split (None, "train" or "test")."""

    name = "igsm"

    def __init__(self, op: int | str | tuple | list | None = None, preset: str = "med", split: str | None = None):
        if preset not in PRESETS:
            raise TailorError(f"unknown igsm preset {preset!r}; use one of {', '.join(PRESETS)}")
        self.preset = PRESETS[preset]
        self.op_range = (1, self.preset.max_op) if op is None else self._parse_op(op)
        if split not in (None, *SPLITS):
            raise TailorError(f"igsm split must be train, test or unset (both), got {split!r}")
        self.split = split

    def _parse_op(self, op: int | str | tuple | list) -> tuple[int, int]:
        max_op = self.preset.max_op
        try:
            return parse_level_range(op, "op", 1, max_op)
        except TailorError as err:
            try:  # well-formed but too large: say which preset would take it
                _, hi = parse_level_range(op, "op", 1, 10**9)
            except TailorError:
                raise err from None
        bigger = [p for p in PRESETS.values() if p.max_op >= hi]
        fix = f"use preset {bigger[0].name} (max_op {bigger[0].max_op}) or " if bigger else ""
        raise TailorError(f"op {hi} exceeds preset {self.preset.name}'s max_op {max_op}; {fix}choose op <= {max_op}")

    def generate(self, num: int, seed: int) -> Iterator[dict]:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TailorError(f"seed must be a non-negative integer, got {seed!r}")
        for index in range(int(num)):
            rng = np.random.default_rng([int(seed), index])
            record_id = f"igsm-{self.preset.name}-{seed}-{index}"
            for _ in range(MAX_SPLIT_DRAWS):
                # With a split filter, op is redrawn per draw so that ops without any template
                # in that split (op 1-2 have no test templates) are skipped, not fatal.
                op = int(rng.integers(self.op_range[0], self.op_range[1] + 1))
                record = build_problem(rng, op, self.preset, record_id)
                if self.split is None or record["split"] == self.split:
                    break
            else:
                raise TailorError(
                    f"no {self.split}-split iGSM template found for op {self.op_range[0]}..{self.op_range[1]} "
                    f"in {MAX_SPLIT_DRAWS} draws (small op has few templates); use a larger op or leave split unset"
                )
            yield record

    def solve(self, record: dict) -> int:
        try:
            return solve_graph(record["graph"])
        except TailorError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise TailorError(f"not a valid igsm record (bad graph: {err!r}); regenerate it with `tailor-jax generate igsm`") from None

    def difficulty(self, record: dict) -> int:
        return int(record["op"])

    def question(self, record: dict) -> str:
        return f"{record['problem']} {record['question']}"

    def solution_trace(self, record: dict) -> str:
        return record["solution"]

    def format_answer(self, answer: Any) -> str:
        return str(int(answer))

    def parse_answer(self, text: str, record: dict) -> int | None:
        if not isinstance(text, str):
            return None
        text = text.strip()
        if not _ANSWER.fullmatch(text):
            return None
        value = int(text)
        return value if value < MODULUS else None


TASK_CLASS = IGSM
