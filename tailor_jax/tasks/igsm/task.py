"""The iGSM task: one record per problem (`build_problem`), the independent solver
(`solve_graph`) and the `Task` class."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import CliOption, DatasetConfig, DatasetLevel, Task, parse_level_range
from tailor_jax.tasks.igsm.graph import (
    ABSTRACT, INSTANCE, MAX_GRAPH_ATTEMPTS, MAX_SPLIT_DRAWS, MODULUS, PRESETS, SPLITS, GraphBuilder, Preset, ancestors,
    evaluate, op_count, sample_structure, topological_order,
)
from tailor_jax.tasks.igsm.text import question_text, sentence, template_split, write_solution


def _defs_json(builder: GraphBuilder) -> list[dict]:
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
        builder = GraphBuilder(structure, rng)
        question = builder.grow(op)
        if question is None:
            continue
        builder.add_distractors()
        necessary = list(ancestors(builder, question))
        realised = sum(
            op_count(len(builder.abstract[r]) if r[0] == ABSTRACT else builder.defs[r].in_degree) for r in necessary
        )
        if realised != op:
            continue
        values = evaluate(builder)
        order = topological_order(necessary, builder, rng)
        solution = write_solution(order, builder.abstract, builder.defs, values, rng)
        sentences = [sentence(ref, builder.defs[ref]) for ref in builder.instances]
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

DATASET_OPS = {
    # preset: (train op range, test ops). Op is capped at the preset's max_op (15 / 21), so the
    # paper's out-of-distribution ops (above max_op with the same graph sizes) are not here.
    "med": ("1-15", (5, 10, 15)),
    "hard": ("1-21", (10, 15, 21)),
}


class IGSM(Task):
    """iGSM problems with an exact operation count. Options: op (k or "lo-hi", uniform per
    record; default 1..max_op), preset ("med" or "hard"), split (None, "train" or "test")."""

    name = "igsm"
    level_option = "op"
    level_label = "op"
    key_fields = ("problem", "question")
    cli_options = (
        CliOption("op", "exact operation count, or a range such as 2-15"),
        CliOption("preset", "difficulty preset", choices=tuple(PRESETS)),
        CliOption("split", "only this template split (default both)", choices=SPLITS),
    )

    @classmethod
    def dataset_configs(cls) -> list[DatasetConfig]:
        """Per preset: train op range on train templates, and a test split per op on test templates."""
        configs = []
        for preset, (train_ops, test_ops) in DATASET_OPS.items():
            levels = [DatasetLevel({"op": train_ops, "preset": preset, "split": "train"}, (("train", "train", 20000),))]
            levels += [DatasetLevel({"op": op, "preset": preset, "split": "test"}, ((f"test_op{op}", "test", 200),))
                       for op in test_ops]
            configs.append(DatasetConfig(
                preset, f"iGSM-{preset}: train op {train_ops} (train templates), test per op {test_ops} (test templates)",
                tuple(levels)))
        return configs

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
