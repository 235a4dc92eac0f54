"""iGSM reasoning primitives: every trace passes its step checker and the task verifier,
corrupted traces are caught, primitives differ, rendering is deterministic."""

from __future__ import annotations

import ast
import copy
import re
import time

import numpy as np
import pytest

from tailor_jax.primitives.base import TAGS, Primitive
from tailor_jax.primitives.igsm import LIBRARY, evaluate_arithmetic
from tailor_jax.tasks import get_task

REQUIRED = {"forward_topological", "backward_decomposition", "dependencies_then_compute", "compute_then_verify"}
P = 23
PARAM = r"[A-Z][A-Za-z ]*?'s [A-Z][A-Za-z]*"


@pytest.fixture(scope="module")
def task():
    return get_task("igsm")


@pytest.fixture(scope="module")
def records():
    out = []
    for op in range(2, 16):
        out += list(get_task("igsm", op=op).generate(3, seed=100 + op))
    return out


@pytest.fixture(scope="module")
def many():
    """Two dozen problems per op 2..15 (the corruption tests use the smaller `records`)."""
    return [r for op in range(2, 16) for r in get_task("igsm", op=op).generate(24, seed=200 + op)]


@pytest.fixture(scope="module")
def traces(records):
    return {name: [p.render(r) for r in records] for name, p in LIBRARY.items()}


def ref_arithmetic(node) -> int:
    """Independent evaluator (Python's parser) for integer + - * expressions."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}
    assert isinstance(node, ast.BinOp) and type(node.op) in ops, ast.dump(node)
    return ops[type(node.op)](ref_arithmetic(node.left), ref_arithmetic(node.right))


def test_library_contents():
    assert REQUIRED <= set(LIBRARY)
    for name, p in LIBRARY.items():
        assert isinstance(p, Primitive) and p.name == name and p.task == "igsm"
        assert p.tags and p.tags <= TAGS and len(p.description) > 40


def test_every_trace_checks_and_scores(task, many):
    for name, primitive in LIBRARY.items():
        for record in many:
            trace = primitive.render(record)
            assert "<think>" not in trace and "<answer>" not in trace
            assert LIBRARY[name].check(record, trace) == [], (name, record["id"])
            assert task.reward("binary", record, task.target(record, trace)) == 1.0


def test_every_arithmetic_step_is_right_mod_23(traces):
    """Independent of the checker: every 'x = a op b = n op m = r' step and every recomputation."""
    steps = 0
    for rendered in traces.values():
        for trace in rendered:
            for x, op, y, r in re.findall(r"= (\d+) ([-+*]) (\d+) = (\d+)", trace):
                assert int(r) == {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op] % P
                steps += 1
            for expr, r in re.findall(r"Check .+? = ([0-9 +*()-]+) = (\d+):", trace):
                assert ref_arithmetic(ast.parse(expr, mode="eval").body) % P == int(r)
            assert all(int(n) < P for n in re.findall(r"(?<=[=(] )\d+(?=[;.: ]|$)", trace))
    assert steps > 100


def test_values_match_the_independent_solver(records, traces, task):
    """The last Define of the question's parameter carries the solver's answer."""
    for record, trace in zip(records, traces["backward_decomposition"]):
        goal = re.match(r"Goal: (.+)\.", trace)[1]
        value = re.search(rf"Define {re.escape(goal)} as (\w); [^.]*so \1 = [^.]*?(\d+)\.", trace)
        assert int(value[2]) == task.solve(record)


def test_backward_lists_from_the_question_down(records, traces):
    for record, trace in zip(records, traces["backward_decomposition"]):
        lines = trace.split("\n")
        goal = re.fullmatch(r"Goal: (.+)\.", lines[0])[1]
        assert lines[1].startswith(goal + " ")  # the goal is broken down first
        compute = lines[lines.index("Now compute from the bottom up.") + 1]
        assert re.findall(r"Define (.+?) as", compute)[-1] == goal  # and computed last


def test_distinct_primitives_give_distinct_traces(records, traces):
    for k in range(len(records)):
        texts = [traces[name][k] for name in LIBRARY]
        assert len(set(texts)) == len(texts)


def test_deterministic(records, traces):
    for name, p in LIBRARY.items():
        for record, trace in list(zip(records, traces[name]))[::7]:
            assert p.render(copy.deepcopy(record)) == trace


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_corruptions_are_caught(name, records, traces):
    """Changed numbers, changed letters, renamed parameters, dropped or swapped sentences."""
    rng = np.random.default_rng(1)
    primitive = LIBRARY[name]
    for record, trace in list(zip(records, traces[name]))[::2]:
        numbers = list(re.finditer(r"\b\d+\b", trace))
        for k in rng.choice(len(numbers), size=min(5, len(numbers)), replace=False):
            m = numbers[int(k)]
            assert primitive.check(record, trace[: m.start()] + str((int(m[0]) + 1) % P) + trace[m.end() :])
        letters = list(re.finditer(r"(?<=[ (])[A-Za-z](?=[ ;.:])", trace))
        for k in rng.choice(len(letters), size=min(5, len(letters)), replace=False):
            m = letters[int(k)]
            other = "Q" if m[0] != "Q" else "P"
            assert primitive.check(record, trace[: m.start()] + other + trace[m.end() :])
        params = list(re.finditer(PARAM, trace))
        for k in rng.choice(len(params), size=min(3, len(params)), replace=False):
            m = params[int(k)]
            other = next((p[0] for p in params if p[0] != m[0]), None)
            if other is not None:
                assert primitive.check(record, trace[: m.start()] + other + trace[m.end() :])
        sentences = re.split(r"(?<=\.)[ \n]", trace)
        for k in rng.choice(len(sentences), size=min(4, len(sentences)), replace=False):
            assert primitive.check(record, " ".join(sentences[: int(k)] + sentences[int(k) + 1 :]))
        defines = [k for k, s in enumerate(sentences) if s.startswith("Define ")]
        if len(defines) > 1:  # the question's sentence moved first uses undefined letters
            swapped = sentences[: defines[0]] + [sentences[defines[-1]]] + sentences[defines[0] : defines[-1]] + sentences[defines[-1] + 1 :]
            assert primitive.check(record, "\n".join(swapped))
        assert primitive.check(record, "")
        assert primitive.check(record, trace + "\nThe answer is surely 3.")


def test_check_messages_name_the_problem(records, traces):
    record, trace = records[-1], traces["forward_topological"][-1]
    m = re.search(r"= (\d+)\.$", trace)
    bad = trace[: m.start(1)] + str((int(m[1]) + 1) % P) + "."
    problems = LIBRARY["forward_topological"].check(record, bad)
    assert any("mod 23" in p or "gives" in p for p in problems), problems
    problems = LIBRARY["forward_topological"].check(record, trace.replace("Define ", "Define Moon's ", 1))
    assert any("not a parameter" in p for p in problems), problems


def test_evaluate_arithmetic():
    assert evaluate_arithmetic("2 * 3 + 4 * 5") == 26
    assert evaluate_arithmetic("7 * (3 + 4 - 10)") == -21
    assert evaluate_arithmetic("12") == 12
    for bad in ["", "2 +", "(1", "1 ) 2", "__import__", "2 / 3"]:
        assert evaluate_arithmetic(bad) is None


@pytest.mark.slow
def test_thousand_problems_every_primitive(task):
    """1000 problems (op 1..15) per primitive: check passes and the target scores 1."""
    records = list(get_task("igsm", op="1-15").generate(1000, seed=2024))
    start = time.perf_counter()
    for p in LIBRARY.values():
        for record in records:
            trace = p.render(record)
            assert p.check(record, trace) == [], (p.name, record["id"])
            assert task.reward("binary", record, task.target(record, trace)) == 1.0
    print(f"igsm: {len(records)} problems x {len(LIBRARY)} primitives in {time.perf_counter() - start:.1f} s")
