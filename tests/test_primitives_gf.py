"""GF primitives: every trace verified (steps and final answer) and corruptions caught."""

from __future__ import annotations

import random
import re

import pytest

from tailor_jax.cli import main as cli_main
from tailor_jax.errors import TailorError
from tailor_jax.primitives import all_primitives, compose, compositions, get_library, get_primitive, verification_pass
from tailor_jax.primitives import gf as gf_prims
from tailor_jax.tasks import get_task
from tailor_jax.tasks.gf import inverse, split_step_tag

TASKS = [get_task("gf", p=11, steps="1-8"), get_task("gf", p=13, steps="1-8", symbol_seed=3),
         get_task("gf", p=11, steps="1-8", tag_pool=12)]  # tags drawn from 1..12
RECORDS = [r for i, task in enumerate(TASKS) for r in task.generate(150, 10 + i)]
TASK = TASKS[0]
SYMBOL = re.compile(r"(?<![a-z])[a-z]{2}(?![a-z])")


def test_library_lists_at_least_four_primitives_with_compositions():
    library = get_library("gf")
    assert {"forward", "backward", "guess_and_check", "verify_by_substitution"} <= set(library)
    assert all(p.task == "gf" and p.source == "library" and p.description for p in library.values())
    composed = compositions("gf")
    assert "forward+substitution_check" in composed and composed["forward+substitution_check"].source == "composition"
    assert not any("verification" in library[name.split("+")[0]].tags for name in composed)
    assert get_primitive("gf", "backward+substitution_check").name == "backward+substitution_check"
    with pytest.raises(TailorError, match="unknown gf primitive"):
        get_primitive("gf", "nope")
    with pytest.raises(TailorError, match="no primitive library"):
        get_library("chess")


@pytest.mark.parametrize("name", sorted(all_primitives("gf")))
def test_every_trace_passes_its_checks_and_the_verifier(name):
    primitive = all_primitives("gf")[name]
    for record in RECORDS:
        trace = primitive.render(record)
        assert primitive.check(record, trace) == [], (record["id"], trace)
        assert TASK.reward("binary", record, TASK.target(record, trace)) == 1.0
        last = trace.strip().split("\n")[-1]
        assert last == f"{'y' if record['kind'] == 'evaluation' else 'x'} = {record['symbols'][str(record['answer'])]}"


def test_forward_and_backward_are_the_task_renderers():
    for record in RECORDS[:20]:
        assert get_library("gf")["forward"].render(record) == TASK.solution_trace(record)
        assert get_library("gf")["backward"].render(record) == get_task("gf", strategy="backward").solution_trace(record)


def _corruptions(record, trace, rng):
    """Every trace with one numeral symbol replaced by another."""
    symbols = list(record["symbols"].values())
    lines = trace.split("\n")
    for i, line in enumerate(lines):
        for match in SYMBOL.finditer(line):
            if match.group() in symbols:
                other = rng.choice([s for s in symbols if s != match.group()])
                bad = line[: match.start()] + other + line[match.end() :]
                yield "\n".join(lines[:i] + [bad] + lines[i + 1 :])


@pytest.mark.parametrize("name", sorted(all_primitives("gf")))
def test_every_single_symbol_corruption_fails_the_check(name):
    primitive = all_primitives("gf")[name]
    rng = random.Random(0)
    count = 0
    for record in RECORDS[::10]:
        for corrupted in _corruptions(record, primitive.render(record), rng):
            assert primitive.check(record, corrupted), corrupted
            count += 1
    assert count > 100


def test_structural_corruptions_fail_the_check():
    record = next(r for r in RECORDS if r["kind"] == "inversion" and r["k"] >= 3)
    check = gf_prims.check_gf_trace
    lines = [line for line in gf_prims.backward_trace(record).split("\n") if not split_step_tag(line)[1].startswith("inv")]
    for i in range(len(lines) - 1):  # any step dropped
        assert check(record, "\n".join(lines[:i] + lines[i + 1 :])), i
    assert check(record, "\n".join([lines[1], lines[0], *lines[2:]]))  # steps swapped
    assert check(record, "")  # empty
    assert check(record, "x is probably ka")  # not the grammar
    guess = gf_prims.guess_and_check_trace(record).split("\n")
    check_line = next(i for i, line in enumerate(guess) if line.startswith("check"))
    assert check(record, "\n".join(guess[: check_line - 1] + guess[check_line:]))  # compares before the walk ends
    assert check({"p": 11}, "x = ka") == [f"record is malformed: {KeyError('symbols')!r}"]


def test_guess_and_check_is_bounded_and_refutes_only_wrong_values():
    for record in RECORDS:
        wrong = gf_prims.wrong_guesses(record)
        assert len(wrong) <= gf_prims.MAX_WRONG_GUESSES and record["answer"] not in wrong
        assert len(set(wrong)) == len(wrong)
        trace = gf_prims.guess_and_check_trace(record)
        assert trace.count("guess ") == len(wrong) + 1
        assert trace.count(" != ") == 2 * len(wrong)  # one failed comparison + one refutation each


def test_meet_in_middle_solves_at_the_middle_value():
    for record in RECORDS:
        trace = gf_prims.meet_in_middle_trace(record)
        equation = next(line for line in trace.split("\n") if re.fullmatch(r"[a-z]{2}\*[xy]\+[a-z]{2} = [a-z]{2}", line))
        value = {s: int(v) for v, s in record["symbols"].items()}[equation.split(" = ")[1]]
        p, ops = record["p"], record["ops"]
        v0 = record["given"] if record["kind"] == "evaluation" else record["answer"]
        values = [v0]
        for op, c in ops:  # independent chain walk
            values.append({"+": values[-1] + c, "-": values[-1] - c, "*": values[-1] * c}[op] % p)
        middle = (len(ops) + 1) // 2 if record["kind"] == "evaluation" else len(ops) // 2
        assert value == values[middle]


def test_inverse_facts_are_true():
    for record in RECORDS[:50]:
        for line in gf_prims.verify_by_substitution_trace(record).split("\n"):
            line = split_step_tag(line)[1]
            if line.startswith("inv "):
                value = {s: int(v) for v, s in record["symbols"].items()}
                a, b = line[4:].split(" = ")
                assert value[a] * value[b] % record["p"] == 1 and inverse(value[a], record["p"]) == value[b]


def test_composition_reports_a_missing_part():
    first, second = get_library("gf")["forward"], verification_pass("gf")
    composed = compose(first, second)
    record = RECORDS[0]
    assert composed.check(record, composed.render(record)) == []
    problems = composed.check(record, first.render(record))
    assert len(problems) == 1 and "substitution_check part is missing" in problems[0]


def test_primitives_cli(capsys):
    assert cli_main(["primitives", "gf", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for name in all_primitives("gf"):
        assert f"== {name} [" in out
    assert "CHECK FAILED" not in out and out.count("<answer>") == len(all_primitives("gf"))
    assert cli_main(["primitives", "chess"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_cli_stops_quietly_when_its_reader_goes_away():
    """`tailor-jax ... | head`: the closed pipe ends the command without a traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "tailor_jax.cli", "primitives", "kk"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
