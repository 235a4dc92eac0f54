"""A task is one module registered in `tasks.TASK_MODULES`: its metadata reaches the generate
CLI, evaluation levels, datasets, report labels and the Tailor metrics from the `Task` class
alone. A toy task written here (in a temporary module) goes through all of them; and the
primitive libraries and the Tailor pipeline use no private task function."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

import tailor_jax
from tailor_jax.cli import main as cli_main
from tailor_jax.tasks import TASK_MODULES, get_task, problem_key, task_class

TOY_MODULE = '''
import numpy as np

from tailor_jax.tasks.base import CliOption, DatasetConfig, DatasetLevel, Task, parse_level_range


class Parity(Task):
    """Parity of n bits (n = `length`, 1..12)."""

    name = "toy"
    level_option = "length"
    level_label = "n"
    key_fields = ("bits",)
    cli_options = (CliOption("length", "number of bits, or a range such as 2-5"),)
    trace_variables = frozenset({"q"})

    @classmethod
    def dataset_configs(cls):
        return [DatasetConfig("small", "3..4 bits", tuple(
            DatasetLevel({"length": n}, ((f"test_n{n}", "test", 2), ("train", "train", 3))) for n in (3, 4)))]

    def __init__(self, length=3):
        self.length = parse_level_range(length, "length", 1, 12)

    def generate(self, num, seed):
        rng = np.random.default_rng(seed)
        seen = set()
        for _ in range(100 * num):  # bounded: a short length has few distinct problems
            if len(seen) == num:
                return
            n = int(rng.integers(self.length[0], self.length[1] + 1))
            bits = [int(b) for b in rng.integers(0, 2, size=n)]
            if tuple(bits) in seen:
                continue
            seen.add(tuple(bits))
            yield {"task": "toy", "id": f"toy-{seed}-{len(seen)}", "bits": bits, "answer": sum(bits) % 2}

    def solve(self, record):
        return sum(record["bits"]) % 2

    def difficulty(self, record):
        return len(record["bits"])

    def question(self, record):
        return "Parity of " + " ".join(map(str, record["bits"])) + "?"

    def solution_trace(self, record):
        return f"q = {sum(record['bits'])}"

    def format_answer(self, answer):
        return str(answer)

    def parse_answer(self, text, record):
        return int(text) if text.strip() in ("0", "1") else None


TASK_CLASS = Parity
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy_parity_task.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(TASK_MODULES, "toy", "toy_parity_task")
    return task_class("toy")


def test_a_registered_module_is_a_task(toy):
    task = get_task("toy", length="2-4")
    records = list(task.generate(5, seed=0))
    assert all(task.is_correct(r, task.solve(r)) for r in records)
    assert {task.difficulty(r) for r in records} <= {2, 3, 4}
    assert toy.content_key(records[0]) == json.dumps([records[0]["bits"]])


def test_generate_cli_takes_the_flags_the_task_declares(toy, tmp_path, capsys):
    out = tmp_path / "toy.jsonl"
    assert cli_main(["generate", "toy", "--num", "4", "--seed", "1", "--length", "5", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(len(r["bits"]) == 5 for r in lines)
    # another task's flag is refused with one line naming the task it belongs to
    assert cli_main(["generate", "gf", "--num", "2", "--length", "5", "--out", str(tmp_path / "gf.jsonl")]) == 2
    assert "--length is a toy option and does not apply to gf" in capsys.readouterr().err


def test_evaluation_levels_and_labels_come_from_the_task(toy):
    from tailor_jax.eval.accuracy import level_records
    from tailor_jax.eval.evaluate import describe
    from tailor_jax.eval.report import _level_label

    records = level_records("toy", {}, [3, 6], per_level=3, seed=0)
    assert [len(r["bits"]) for r in records] == [3, 3, 3, 6, 6, 6]
    held_out = level_records("toy", {}, [6], per_level=3, seed=0, exclude={problem_key(records[3])})
    assert problem_key(records[3]) not in {problem_key(r) for r in held_out}
    assert _level_label({"task": "toy"}) == "n" and _level_label({"task": "nope"}) == "level"
    result = {"acc": 0.5, "acc_by_level": {"2": 1.0, "6": 0.0}, "mean_length": 3.0, "num_problems": 2}
    assert describe(result, "toy").splitlines()[0] == "| model | n 2 | n 6 | avg |"


def test_datasets_use_the_task_configs_and_content_key(toy):
    from tailor_jax.data import tfds_builders

    assert tfds_builders.config_names("toy")[0] == "small"
    assert tfds_builders.builder_class("toy").name == "tailor_toy"
    config = tfds_builders.builder_class("toy").BUILDER_CONFIGS[0]
    by_split = tfds_builders.generate_splits("toy", config.levels, {})
    assert {name: len(v) for name, v in by_split.items()} == {"test_n3": 2, "train": 6, "test_n4": 2}
    # the same bits under another id are the same problem
    record = by_split["train"][0]
    with pytest.raises(tailor_jax.errors.TailorError, match="appears in both"):
        tfds_builders.check_disjoint("toy", {"train": [record], "test": [dict(record, id="other")]})


def test_reasoning_states_keep_the_task_trace_variables(toy):
    from tailor_jax.tailor.metrics import step_state

    assert step_state({"task": "toy"}, "q = 3") == ("q = #", 3)
    assert step_state({"task": "kk"}, "q = 3") == ("v = #", 3)  # kk keeps no letters


PUBLIC_ONLY = ("primitives", "tailor", "eval", "data")


def test_primitives_and_pipeline_use_public_task_functions_only():
    """No `from tailor_jax.tasks... import _x` and no `task_module._x` in the packages built on tasks."""
    root = Path(tailor_jax.__file__).parent
    offenders = []
    for package in PUBLIC_ONLY:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            task_aliases = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tailor_jax.tasks"):
                    offenders += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
                    task_aliases |= {a.asname or a.name for a in node.names}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                        and isinstance(node.value, ast.Name) and node.value.id in task_aliases):
                    offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not offenders, offenders
