"""K&K reasoning primitives: every trace passes its step checker and the task verifier,
corrupted traces are caught, primitives differ, rendering is deterministic."""

from __future__ import annotations

import copy
import itertools
import re
import time

import numpy as np
import pytest

from tailor_jax.primitives.base import TAGS, Primitive
from tailor_jax.primitives.kk import LIBRARY, with_verification
from tailor_jax.tasks import get_task

REQUIRED = {
    "assume_refute_dfs", "case_enumeration", "forced_role_propagation", "statement_analysis",
    "answer_first_verify", "with_self_verification", "error_recovery",
}  # fmt: skip
FLIP = {"knight": "knave", "knave": "knight", "true": "false", "false": "true"}


@pytest.fixture(scope="module")
def task():
    return get_task("kk")


@pytest.fixture(scope="module")
def records():
    out = []
    for n in range(2, 7):
        out += list(get_task("kk", people=n).generate(24, seed=10 + n))
    out += list(get_task("kk", people="3-5", depth=3, width=3).generate(12, seed=7))
    return out


@pytest.fixture(scope="module")
def traces(records):
    return {name: [p.render(r) for r in records] for name, p in LIBRARY.items()}


# --- independent reference (shares no code with the library) --------------------------
def ref_value(statement, roles):
    op, *args = statement
    if op == "telling-truth":
        return roles[args[0]]
    if op == "lying":
        return not roles[args[0]]
    vals = [ref_value(a, roles) for a in args]
    return {"not": lambda: not vals[0], "and": lambda: all(vals), "or": lambda: any(vals),
            "->": lambda: (not vals[0]) or vals[1], "<=>": lambda: vals[0] == vals[1]}[op]()  # fmt: skip


def test_library_contents():
    assert REQUIRED <= set(LIBRARY)
    for name, p in LIBRARY.items():
        assert isinstance(p, Primitive) and p.name == name and p.task == "kk"
        assert p.tags and p.tags <= TAGS and len(p.description) > 40


def test_every_trace_checks_and_scores(task, records, traces):
    for name, rendered in traces.items():
        for record, trace in zip(records, rendered):
            assert "<think>" not in trace and "<answer>" not in trace
            assert LIBRARY[name].check(record, trace) == [], (name, record["id"])
            assert task.reward("binary", record, task.target(record, trace)) == 1.0, (name, record["id"])
            assert task.reward("logic_rl", record, task.target(record, trace)) == 3.0


def test_distinct_primitives_give_distinct_traces(traces, records):
    for k in range(len(records)):
        texts = [traces[name][k] for name in LIBRARY]
        assert len(set(texts)) == len(texts)


def test_deterministic(records, traces):
    for name, p in LIBRARY.items():
        for record, trace in list(zip(records, traces[name]))[::10]:
            assert p.render(copy.deepcopy(record)) == trace


def _flip_at(trace: str, match: re.Match) -> str:
    return trace[: match.start()] + FLIP[match[0]] + trace[match.end() :]


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_flipped_roles_and_truth_values_are_caught(name, records, traces):
    """Every knight/knave and true/false word of a trace is load-bearing: flipping any one of
    them (sampled positions, all lines) makes the check fail."""
    rng = np.random.default_rng(0)
    primitive, tried = LIBRARY[name], 0
    for record, trace in list(zip(records, traces[name]))[::3]:
        words = list(re.finditer(r"\b(knight|knave|true|false)\b", trace))
        for k in rng.choice(len(words), size=min(6, len(words)), replace=False):
            bad = _flip_at(trace, words[int(k)])
            assert primitive.check(record, bad), (name, record["id"], words[int(k)].start())
            tried += 1
        # The final answer line in particular.
        last = list(re.finditer(r"\b(knight|knave)\b", trace.split("\n")[-1]))
        if last:
            offset = len(trace) - len(trace.split("\n")[-1])
            m = last[-1]
            assert primitive.check(record, trace[: offset + m.start()] + FLIP[m[0]] + trace[offset + m.end() :])
    assert tried > 50


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_other_corruptions_are_caught(name, records, traces):
    primitive = LIBRARY[name]
    for record, trace in list(zip(records, traces[name]))[::4]:
        lines = trace.split("\n")
        names = record["names"]
        # Dropping the last line (the conclusion / closing) is always caught.
        assert primitive.check(record, "\n".join(lines[:-1]))
        # So is a line that belongs to no primitive, and an empty trace.
        assert primitive.check(record, "\n".join(lines[:2] + ["Then I guessed."] + lines[2:]))
        assert primitive.check(record, "")
        # Swapping two people's names in the stated answer (when their roles differ).
        a, b = names[0], names[1]
        if record["solution"][0] != record["solution"][1]:
            k = next(k for k, line in enumerate(lines) if record["solution_text"] in line)
            swapped = lines[k].replace(a, "\0").replace(b, a).replace("\0", b)
            assert primitive.check(record, "\n".join(lines[:k] + [swapped] + lines[k + 1 :]))
        # Quoting someone else's statement.
        quoted = [k for k, line in enumerate(lines) if '"' in line]
        statements_text = re.findall(r'"([^"]*)"', trace)
        others = [s for s in set(statements_text) if s]
        if quoted and len(others) > 1:
            k = quoted[len(quoted) // 2]
            current = re.search(r'"([^"]*)"', lines[k])[1]
            replacement = next(s for s in others if s != current)
            bad_lines = lines[:k] + [lines[k].replace(f'"{current}"', f'"{replacement}"', 1)] + lines[k + 1 :]
            assert primitive.check(record, "\n".join(bad_lines))


def test_dropped_lines_are_mostly_caught(records, traces):
    """Dropping one line is caught whenever a later step relies on it; the DFS checker cannot see
    a dropped 'consistent' line inside a branch that is refuted later (the branch needs no proof
    of consistency), so its rate is lower."""
    rates = {}
    for name, primitive in LIBRARY.items():
        caught = total = 0
        for record, trace in list(zip(records, traces[name]))[::4]:
            lines = trace.split("\n")
            for k in range(1, len(lines)):
                caught += bool(primitive.check(record, "\n".join(lines[:k] + lines[k + 1 :])))
                total += 1
        rates[name] = caught / total
    for name, rate in rates.items():
        assert rate >= (0.8 if "dfs" in name or "self_verification" in name else 0.95), rates


def test_case_enumeration_claims_against_brute_force(records, traces):
    """Each block line's claim holds for every assignment in the block (independent evaluator)."""
    line_re = re.compile(r"Cases? (\d+)(?:-(\d+))? \(([a-z, ]+)\): (\w+)'s statement is (true|false), but (\w+) is a (knight|knave)\.")
    for record, trace in zip(records, traces["case_enumeration"]):
        n, index = record["n_people"], {name: i for i, name in enumerate(record["names"])}
        covered = 0
        for line in trace.split("\n")[1:-1]:
            if m := line_re.fullmatch(line):
                first, last = int(m[1]), int(m[2] or m[1])
                speaker = index[m[4]]
                for case in range(first - 1, last):
                    roles = [not (case >> (n - 1 - i) & 1) for i in range(n)]
                    assert ref_value(record["statements"][speaker], roles) == (m[5] == "true")
                    assert roles[speaker] == (m[7] == "knight") != (m[5] == "true")
                covered += last - first + 1
            else:
                covered += 1
        assert covered == 2**n


def test_statement_analysis_tables_against_brute_force(records, traces):
    own = re.compile(r'(\w+): "[^"]*" allows \(([A-Za-z, ]+)\) = (.+)\.')
    for record, trace in zip(records, traces["statement_analysis"]):
        index = {name: i for i, name in enumerate(record["names"])}
        for line in trace.split("\n"):
            if m := own.fullmatch(line):
                speaker, people = index[m[1]], [index[x] for x in m[2].split(", ")]
                rows = {tuple(w == "knight" for w in row.strip("()").split(", ")) for row in m[3].split(" or ")}
                expected = set()
                for combo in itertools.product((True, False), repeat=len(people)):
                    roles = dict(zip(people, combo))
                    try:
                        if ref_value(record["statements"][speaker], roles) == roles[speaker]:
                            expected.add(combo)
                    except KeyError:  # a person outside `people` was needed: the list is incomplete
                        pytest.fail(f"{m[1]}'s list omits a person the statement mentions")
                assert rows == expected


def test_error_recovery_starts_with_a_wrong_guess(records, traces):
    for record, trace in zip(records, traces["error_recovery"]):
        lines = trace.split("\n")
        m = re.fullmatch(r"Guess: (\w+) is a (knight|knave)\.", lines[1])
        person = record["names"].index(m[1])
        assert (m[2] == "knight") != record["solution"][person]
        assert any(line.startswith(f"The guess was wrong, so {m[1]} is a") for line in lines)
        assert any("contradiction" in line for line in lines)


def test_propagation_branches_only_when_stuck(records, traces):
    """Some problems need a branch, others none; a branch comes after the statements stop forcing."""
    branched = [trace for trace in traces["forced_role_propagation"] if "Stuck; suppose" in trace]
    assert 0 < len(branched) < len(records)


@pytest.mark.parametrize("base", ["case_enumeration", "statement_analysis", "forced_role_propagation"])
def test_with_verification_composes_any_base(base, task, records):
    composed = with_verification(LIBRARY[base])
    assert composed.source == "composition" and "verification" in composed.tags
    assert composed.name == f"{base}_then_verify"
    for record in records[::5]:
        trace = composed.render(record)
        assert trace.startswith(LIBRARY[base].render(record))
        assert composed.check(record, trace) == []
        assert task.reward("binary", record, task.target(record, trace)) == 1.0
        # Corrupt the verification pass (a truth value) and, separately, the base part.
        lines = trace.split("\n")
        k = max(i for i, line in enumerate(lines) if line.startswith("Check "))
        m = re.search(r"\b(true|false)\b", lines[k])
        bad = lines[:k] + [lines[k][: m.start()] + FLIP[m[0]] + lines[k][m.end() :]] + lines[k + 1 :]
        assert composed.check(record, "\n".join(bad))
        assert composed.check(record, "\n".join(lines[:1] + lines[2:]))


def test_checks_never_raise_on_garbage(records):
    record = records[0]
    for p in LIBRARY.values():
        for text in ["", "knight knave", '"" is true', "Final check of the answer: x\nCheck", "\n\n\n"]:
            assert p.check(record, text)


@pytest.mark.slow
def test_thousand_problems_every_primitive(task):
    """1000 problems (2..8 people) per primitive: check passes and the target scores 1."""
    records = list(get_task("kk", people="2-8").generate(1000, seed=2024))
    start = time.perf_counter()
    for p in LIBRARY.values():
        for record in records:
            trace = p.render(record)
            assert p.check(record, trace) == [], (p.name, record["id"])
            assert task.reward("binary", record, task.target(record, trace)) == 1.0
    print(f"kk: {len(records)} problems x {len(LIBRARY)} primitives in {time.perf_counter() - start:.1f} s")
