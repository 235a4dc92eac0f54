"""GF(p) chains: generator, solver, renderers, step checker, parsing, rewards and the CLI.

The chain arithmetic and the trace check are re-implemented here (small, independent code)
rather than trusted from tailor_jax.tasks.gf.
"""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailor_jax.cli import main as cli_main
from tailor_jax.errors import TailorError
from tailor_jax.tasks import get_task
from tailor_jax.tasks import gf

RECORD_KEYS = {"task", "id", "p", "kind", "k", "ops", "given", "answer", "question", "symbols"}


# --- independent reference ----------------------------------------------------------------
def ref_step(op, a, c, p):
    return {"+": a + c, "-": a - c, "*": a * c}[op] % p


def ref_inverse(a, p):
    return next(b for b in range(1, p) if a * b % p == 1)


def ref_answer(record):
    """Brute force: evaluation runs the chain; inversion tries every start value."""
    p = record["p"]

    def run(v):
        for op, c in record["ops"]:
            v = ref_step(op, v, c, p)
        return v

    if record["kind"] == "evaluation":
        return run(record["given"])
    (start,) = [v for v in range(p) if run(v) == record["given"]]
    return start


def ref_check(record, trace):
    """Verify every line of a trace by token arithmetic; return the concluded (var, value)."""
    p = record["p"]
    val = {s: int(i) for i, s in record["symbols"].items()}
    truth = {"x": record["given"], "y": record["answer"]}
    if record["kind"] == "inversion":
        truth = {"x": record["answer"], "y": record["given"]}

    def affine(tok):  # "aa*x+bb" -> (a, var, b)
        coeff, rest = tok.split("*")
        var, const = rest.split("+")
        return val[coeff], var, val[const]

    lines = trace.split("\n")
    # The question labels the ops "(L) op sym" in chain order; a line tagged (L) applies or undoes op L.
    labelled = re.findall(r"\((\d+)\) ([-+*]) ([a-z]{2})", record["question"])
    assert [(op, val[sym]) for _, op, sym in labelled] == [tuple(o) for o in record["ops"]]
    position = {label: i for i, (label, _, _) in enumerate(labelled, 1)}
    tags = []
    for line in lines:
        tok = line.split(" ")
        if tok[0].startswith("("):
            i = position[tok.pop(0)[1:-1]]
            op, c = record["ops"][i - 1]
            if tok[0] == "inv":
                assert op == "*" and val[tok[1]] == c, line
            else:
                line_op, line_c = tok[1], val[tok[2]]
                assert all(
                    ref_step(op, ref_step(line_op, v, line_c, p), c, p) == v or (line_op, line_c) == (op, c)
                    for v in range(p)
                ), line
            tags.append(i)
        assert all(not ch.isdigit() for ch in " ".join(tok)), line
        if tok[0] == "inv":
            assert len(tok) == 4 and tok[2] == "="
            assert val[tok[1]] * val[tok[3]] % p == 1, line
        elif len(tok) == 5 and "*" in tok[0] and "*" in tok[4]:
            a, var, b = affine(tok[0])
            a2, var2, b2 = affine(tok[4])
            c = val[tok[2]]
            assert var == var2
            for probe in range(p):  # the maps agree as functions of the variable
                assert ref_step(tok[1], (a * probe + b) % p, c, p) == (a2 * probe + b2) % p, line
        elif len(tok) == 5:
            assert tok[3] == "="
            assert ref_step(tok[1], val[tok[0]], val[tok[2]], p) == val[tok[4]], line
        elif len(tok) == 3 and "*" in tok[0]:
            a, var, b = affine(tok[0])
            assert (a * truth[var] + b) % p == val[tok[2]], line
        else:
            assert len(tok) == 3 and tok[0] in "xy" and tok[1] == "=", line
            assert val[tok[2]] == truth[tok[0]], line
    steps = list(dict.fromkeys(tags))  # an inv fact and its step share a tag
    assert steps in (list(range(1, record["k"] + 1)), list(range(record["k"], 0, -1))), tags
    last = lines[-1].split(" ")
    return last[0], val[last[2]]


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def records():
    task = get_task("gf", p=13, steps="1-8")
    return list(task.generate(200, seed=3))


def test_determinism_and_seed_sensitivity():
    task = get_task("gf")
    first = list(task.generate(50, seed=7))
    assert first == list(get_task("gf").generate(50, seed=7))
    assert first != list(task.generate(50, seed=8))
    assert len({r["id"] for r in first}) == 50


def test_records_schema_and_json_round_trip(records):
    for r in records:
        assert set(r) == RECORD_KEYS and r["task"] == "gf" and r["p"] == 13
        assert json.loads(json.dumps(r)) == r
        assert 1 <= r["k"] == len(r["ops"]) <= 8
        assert all(op in "+-*" and 1 <= c < 13 for op, c in r["ops"])
        assert 0 <= r["given"] < 13 and 0 <= r["answer"] < 13
    assert {r["kind"] for r in records} == {"evaluation", "inversion"}
    assert {r["k"] for r in records} == set(range(1, 9))
    keys = {(r["kind"], r["given"], json.dumps(r["ops"])) for r in records}
    assert len(keys) == len(records)  # no repeated problem


def test_answers_match_independent_recomputation(records):
    task = get_task("gf", p=13)
    for r in records:
        assert r["answer"] == ref_answer(r)
        assert task.solve(r) == r["answer"]
        assert task.difficulty(r) == r["k"]


@pytest.mark.parametrize("strategy", ["forward", "backward"])
def test_traces_check_out_line_by_line(records, strategy):
    task = get_task("gf", p=13, strategy=strategy)
    for r in records:
        trace = task.solution_trace(r)
        var, value = ref_check(r, trace)
        assert var == ("y" if r["kind"] == "evaluation" else "x")
        assert value == r["answer"]
        assert gf.check_trace(r, trace) == []


def test_trace_lengths_follow_the_strategy(records):
    for r in records:
        k, muls = r["k"], sum(op == "*" for op, _ in r["ops"])
        fwd = gf.forward_trace(r).split("\n")
        bwd = gf.backward_trace(r).split("\n")
        if r["kind"] == "evaluation":
            assert len(fwd) == k + 1 and len(bwd) == k + muls + 5
        else:
            assert len(fwd) == k + 5 and len(bwd) == k + muls + 1


def test_mixed_strategy_is_deterministic_and_uses_both(records):
    task = get_task("gf", p=13, strategy="mixed")
    traces = [task.solution_trace(r) for r in records]
    assert traces == [task.solution_trace(r) for r in records]
    used = {gf.forward_trace(r) == t for r, t in zip(records, traces) if gf.forward_trace(r) != gf.backward_trace(r)}
    assert used == {True, False}


def test_corrupted_trace_is_caught(records):
    for n, r in enumerate(records[:60]):
        lines = gf.forward_trace(r).split("\n") if n % 2 else gf.backward_trace(r).split("\n")
        i = n % len(lines)
        last = lines[i][-2:]
        other = next(s for s in r["symbols"].values() if s != last)
        lines[i] = lines[i][:-2] + other
        bad = "\n".join(lines)
        errors = gf.check_trace(r, bad)
        assert len(errors) == 1 and errors[0].startswith(f"line {i + 1} "), errors
        with pytest.raises(AssertionError):
            ref_check(r, bad)
    for r in records[:60]:  # a step tag pointing at another op (or outside the chain) is caught
        lines = gf.forward_trace(r).split("\n")
        if r["k"] < 2 or r["ops"][0] == r["ops"][1]:
            continue
        for wrong in ("(2) ", f"({r['k'] + 1}) "):
            bad = "\n".join([wrong + lines[0][4:], *lines[1:]])
            assert len(gf.check_trace(r, bad)) == 1, bad
    r = records[0]
    assert gf.check_trace(r, "") == ["trace is empty"]
    assert gf.check_trace(r, "ka plus mo")[0].endswith("not a step of the trace grammar")
    assert "unknown symbol" in gf.check_trace(r, "qq + qq = qq")[0]


@pytest.mark.parametrize("p", [11, 13])
def test_symbol_table_is_a_bijection(p):
    table = gf.symbol_table(p, symbol_seed=0)
    assert sorted(table, key=int) == [str(i) for i in range(p)]
    assert len(set(table.values())) == p
    assert all(len(s) == 2 and s.isalpha() and s.islower() for s in table.values())
    assert gf.symbol_table(p, 0) == table and gf.symbol_table(p, 1) != table
    record = next(get_task("gf", p=p, symbol_seed=1).generate(1, 0))
    assert record["symbols"] == gf.symbol_table(p, 1)


def test_parse_answer_and_rewards_by_hand():
    task = get_task("gf")
    r = next(task.generate(1, seed=0))
    sym = r["symbols"]
    right, wrong = sym[str(r["answer"])], sym[str((r["answer"] + 1) % 11)]
    assert task.parse_answer(right, r) == r["answer"]
    assert task.parse_answer(f"  {right}\n", r) == r["answer"]
    for text in ["", right.upper(), f"{right} {right}", str(r["answer"]), "x", "qq"]:
        assert task.parse_answer(text, r) is None
    assert task.format_answer(r["answer"]) == right
    target = task.target(r)
    assert target.endswith(f"<answer>{right}</answer>")
    assert task.reward("logic_rl", r, target) == 3.0
    assert task.reward("binary", r, target) == 1.0
    assert task.reward("logic_rl", r, f"<think>t</think><answer>{wrong}</answer>") == -0.5
    assert task.reward("logic_rl", r, "<think>t</think><answer>7</answer>") == -1.0
    assert task.reward("binary", r, f"<answer>{right}</answer>", finished=False) == 0.0


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_fuzz_parse_reward_and_checker_never_raise(text):
    task = get_task("gf")
    r = next(task.generate(1, seed=1))
    parsed = task.parse_answer(text, r)
    assert parsed is None or 0 <= parsed < 11
    for fn, (lo, hi) in [("logic_rl", (-3.0, 3.0)), ("binary", (0.0, 1.0))]:
        assert lo <= task.reward(fn, r, f"<think>{text}</think><answer>{text}</answer>") <= hi
        assert lo <= task.reward(fn, r, text) <= hi
    assert isinstance(gf.check_trace(r, text), list)


@pytest.mark.parametrize(
    "options",
    [{"p": 12}, {"p": "eleven"}, {"steps": 0}, {"steps": 33}, {"steps": "5-2"}, {"kind": "foo"},
     {"strategy": "sideways"}, {"symbol_seed": -1}, {"tag_pool": "nine"}, {"tag_pool": 4},
     {"steps": "2-9", "tag_pool": 8}, {"tag_pool": 100}],
)
def test_bad_options_raise_one_line(options):
    with pytest.raises(TailorError) as err:
        get_task("gf", **options)
    assert "\n" not in str(err.value) and "gf" in str(err.value)


def test_tag_pool_tags_chains_from_a_shared_pool():
    task = get_task("gf", p=11, steps="2-9", tag_pool=9)
    records = list(task.generate(300, seed=5))
    assert "tags" not in next(get_task("gf").generate(1, seed=5))  # default records are unchanged
    for r in records:
        tags = r["tags"]
        assert len(tags) == r["k"] and tags == sorted(set(tags)) and 1 <= tags[0] and tags[-1] <= 9
        assert [int(t) for t in re.findall(r"\((\d)\) [-+*]", r["question"])] == tags
        for render in (gf.forward_trace, gf.backward_trace):
            trace = render(r)
            assert gf.check_trace(r, trace) == [], trace
            assert ref_check(r, trace) == ("y" if r["kind"] == "evaluation" else "x", r["answer"])
            used = {int(t) for t in re.findall(r"^\((\d)\) ", trace, flags=re.M)}
            assert used == set(tags)
    assert {t for r in records if r["k"] <= 5 for t in r["tags"]} == set(range(1, 10))  # short chains use every tag
    assert all(r["tags"] == list(range(1, 10)) for r in records if r["k"] == 9)
    # A line tagged with another op's tag, or with a tag of no op, is caught.
    r = next(r for r in records if r["k"] < 9 and r["ops"][0] != r["ops"][1])
    lines = gf.forward_trace(r).split("\n")
    unused = next(t for t in range(1, 10) if t not in r["tags"])
    for wrong in (r["tags"][1], unused):
        bad = "\n".join([f"({wrong}) " + lines[0].split(") ", 1)[1], *lines[1:]])
        assert len(gf.check_trace(r, bad)) == 1, bad


def test_small_problem_space_runs_out_with_a_clear_error():
    task = get_task("gf", steps=1, kind="evaluation")  # 11 * 3 * 10 = 330 distinct problems
    assert len(list(task.generate(330, seed=0))) == 330
    with pytest.raises(TailorError, match="distinct problems"):
        list(task.generate(331, seed=0))


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "gf.jsonl"
    argv = ["generate", "gf", "--num", "25", "--seed", "4", "--steps", "3-6", "--p", "13", "--no-progress"]
    assert cli_main([*argv, "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == list(get_task("gf", p=13, steps="3-6").generate(25, seed=4))
    capsys.readouterr()
    assert cli_main(["generate", "gf", "--num", "5", "--p", "12", "--out", str(tmp_path / "bad.jsonl")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "p must be 11 or 13" in err
    assert not (tmp_path / "bad.jsonl").exists()
    assert cli_main([*argv, "--tag-pool", "9", "--out", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == list(
        get_task("gf", p=13, steps="3-6", tag_pool=9).generate(25, seed=4))
    capsys.readouterr()
    assert cli_main(["generate", "kk", "--num", "5", "--tag-pool", "9", "--out", str(tmp_path / "bad.jsonl")]) == 2
    assert "--tag-pool is a gf option" in capsys.readouterr().err
