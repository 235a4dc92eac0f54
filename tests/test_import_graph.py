"""The package's imports run one way: every module is parsed (no import is executed), each
`import tailor_jax...` (at module level or inside a function: a lazy import is still a
dependency) becomes an edge, and the edges must (1) point from a higher layer to a lower one, and
(2) form no cycle between modules.

Layers, lowest first (a module may import its own unit and any unit in a lower layer; units
that share a layer may not import each other):

    errors <- atomic <- config, stage_cache <- tasks, parallel <- data, model <- sampling
      <- eval (the evaluator) <- train <- primitives (the libraries) <- tailor (the Tailor pipeline)
      <- report (run and study reports) <- run <- study <- cli

`eval` is the evaluator (`eval.evaluator`, `eval.evaluate`, `eval.accuracy`): the trainers'
periodic evaluation and the Tailor analyse stage use it, so it sits below both. The reports
(`eval.report`, `eval.study_report`, `eval.study_plots`) read what training wrote (`train.metrics`) and are what
`run` and `study` call last, so they sit above the pipeline.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "tailor_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first. A unit is a top-level module or subpackage of tailor_jax, or a module named in
# MODULE_UNITS (a subpackage whose modules live on two layers).
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("atomic",),
    ("config", "stage_cache"),
    ("tasks", "parallel"),
    ("data", "model"),
    ("sampling",),
    ("eval",),
    ("train",),
    ("primitives",),
    ("tailor",),
    ("report",),
    ("run",),
    ("study",),
    ("cli",),
]
MODULE_UNITS = {f"tailor_jax.eval.{name}": "report" for name in ("report", "study_report", "study_plots", "report_command")}
MODULE_UNITS["tailor_jax.study_archive"] = "study"  # the study driver's helper, beside it

# Edges that break the layering on purpose: (importer, imported) -> why. None today.
ALLOWED: dict[tuple[str, str], str] = {}

def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The tailor_jax modules `name` imports (`from a.b import c` is a.b.c when c is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import tailor_jax.a.b` names a module; an attribute's owner
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE + ".") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def unit_of(module: str) -> str:
    if module in MODULE_UNITS:
        return MODULE_UNITS[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(graph: dict[str, set[str]], layers=LAYERS, allowed=ALLOWED) -> list[str]:
    rank = {unit: i for i, names in enumerate(layers) for unit in names}
    problems = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = unit_of(importer), unit_of(target)
            if a == b or (importer, target) in allowed:
                continue
            if a not in rank or b not in rank:
                problems.append(f"{importer} -> {target}: unit {a if a not in rank else b!r} is in no layer; add it to LAYERS")
            elif rank[b] >= rank[a]:
                problems.append(f"{importer} ({a}) imports {target} ({b}), which is not below it")
    return problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of modules (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


# ---------------------------------------------------------------------------------------
def test_every_unit_has_a_layer():
    units = {unit_of(module) for module in all_modules()} - {PACKAGE}
    placed = {unit for names in LAYERS for unit in names}
    assert units <= placed, f"units in no layer: {sorted(units - placed)}; add them to LAYERS"


def test_imports_point_down_the_layers():
    problems = layer_violations(import_graph())
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_exception_is_still_needed():
    graph = import_graph()
    stale = [edge for edge in ALLOWED if edge[1] not in graph.get(edge[0], ())]
    assert not stale, f"exceptions for imports that no longer exist (remove them): {stale}"


def test_the_graph_sees_lazy_and_from_imports():
    graph = import_graph()
    assert "tailor_jax.eval.evaluator" in graph["tailor_jax.train.grpo.rollout"]  # module level, from-import
    assert "tailor_jax.eval.evaluator" in graph["tailor_jax.train.sft"]  # inside a function
    assert "tailor_jax.run.checks" in graph["tailor_jax.run.driver"]  # `from tailor_jax.run import checks`


@pytest.mark.parametrize("edge, expected", [
    (("tailor_jax.tasks.gf", "tailor_jax.train.sft"), "not below it"),  # a back-import
    (("tailor_jax.data.jsonl", "tailor_jax.model.config"), "not below it"),  # across one layer
    (("tailor_jax.newthing.x", "tailor_jax.errors"), "in no layer"),
])
def test_the_checks_catch_a_bad_edge(edge, expected):
    graph = import_graph()
    graph.setdefault(edge[0], set()).add(edge[1])
    assert any(expected in p and edge[0] in p for p in layer_violations(graph))


@pytest.mark.parametrize("edge", [
    # the cycle this test was written against: eval.evaluate's CLI imported tailor_jax.run
    ("tailor_jax.eval.evaluate", "tailor_jax.run"),
    # the memory plan's two former cycles: its SFT step builders lived in the trainer, and the
    # trainers' configs read MemoryConfig from the plan (now train/sft_step.py, train/memory_config.py)
    ("tailor_jax.train.memory_plan", "tailor_jax.train.sft"),
    ("tailor_jax.train.grpo.config", "tailor_jax.train.memory_plan"),
])
def test_the_cycle_check_catches_a_cycle(edge):
    graph = import_graph()
    assert find_cycle(graph) is None
    back = {**graph, edge[0]: graph[edge[0]] | {edge[1]}}
    assert edge[0] in find_cycle(back)


def test_every_command_module_registers_its_command():
    """`tailor-jax` finds each command in the module `cli.COMMANDS` names (`eval` and `report`
    moved out of the modules they used to share with the evaluator and the run report)."""
    import argparse

    from tailor_jax.cli import COMMANDS, build_parser

    graph = import_graph()
    for name, module in COMMANDS.items():
        assert module in graph, f"{name}: no module {module}"
        parser = build_parser(name)
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert callable(subparsers.choices[name].get_default("func")), f"{module} does not register {name}"
