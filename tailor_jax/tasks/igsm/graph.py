"""iGSM problem graphs: the structure graph and the dependency graph grown from the question,
their values mod 23 and the orders a solution may define parameters in (steps 1-3 of the
construction in `tailor_jax.tasks.igsm`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tailor_jax.tasks.igsm.names import HIERARCHIES

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
class GraphBuilder:
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


def evaluate(builder: GraphBuilder) -> dict[Ref, int]:
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


def ancestors(builder: GraphBuilder, ref: Ref) -> dict[Ref, None]:
    out: dict[Ref, None] = {}
    stack = [ref]
    while stack:
        r = stack.pop()
        if r not in out:
            out[r] = None
            stack.extend(builder.deps(r))
    return out


def topological_order(nodes: list[Ref], builder: GraphBuilder, rng: np.random.Generator) -> list[Ref]:
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
