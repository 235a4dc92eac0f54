"""GF(p) chain primitives: forward, backward, guess-and-check, verify-by-substitution,
meet-in-the-middle, and the substitution pass used by compositions.

Every trace uses the task's line grammar (`tailor_jax/tasks/gf.py`, docs/tasks-gf.md: each
step tagged with the position of the op it applies or undoes) plus four line forms of ours:

    guess      := "guess " VAR " = " SYM        guess x = ka      (a candidate, no claim)
    check_eq   := "check " SYM " = " SYM        check ri = ri     (claim: equal values)
    check_ne   := "check " SYM " != " SYM       check ri != te    (claim: different values)
    refute     := VAR " != " SYM                x != ka           (claim: not the true value)

`check_gf_trace` verifies every claim: each task-grammar line through `check_trace` (field
arithmetic, inverses, affine-map algebra, equations and conclusions against the true values),
our claims as stated above, plus the walk structure the task checker leaves out: a numeric
step starts from the value the previous step produced (or the guess / conclusion / equation
right before it), a map step from the previous map (or the identity), and every walk that
starts at the top of the trace, at a guess or at a conclusion follows the chain's ops (or the
undo steps, last op first) from the first op on, and is complete before a comparison or a
conclusion. A corrupted step therefore fails the check.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from tailor_jax.primitives.base import Primitive
from tailor_jax.tasks import gf as gf_task

# --- our line forms --------------------------------------------------------------------------
_SYM = r"([a-z]{2})"
_GUESS = re.compile(rf"^guess ([xy]) = {_SYM}$")
_CHECK = re.compile(rf"^check {_SYM} (=|!=) {_SYM}$")
_REFUTE = re.compile(rf"^([xy]) != {_SYM}$")
_NUM = re.compile(rf"^{_SYM} ([-+*]) {_SYM} = {_SYM}$")
_MAP = re.compile(rf"^{_SYM}\*([xy])\+{_SYM} ([-+*]) {_SYM} = {_SYM}\*([xy])\+{_SYM}$")
_INV = re.compile(rf"^inv {_SYM} = {_SYM}$")
_EQUATION = re.compile(rf"^{_SYM}\*([xy])\+{_SYM} = {_SYM}$")
_CONCLUSION = re.compile(rf"^([xy]) = {_SYM}$")

MAX_WRONG_GUESSES = 3


def _s(record: dict, value: int) -> str:  # noqa: D103
    return record["symbols"][str(value)]


def _unknown(record: dict) -> str:
    return "y" if record["kind"] == "evaluation" else "x"


def _forward_ops(record: dict) -> list[tuple[str, int]]:
    return [(op, int(c)) for op, c in record["ops"]]


def _undo_ops(record: dict) -> list[tuple[str, int]]:
    return [(step.op, step.c) for step in gf_task.undo_steps(record)]


def _numeric_forward(record: dict, start: int, num_ops: int | None = None) -> tuple[list[str], int]:
    """Apply the first `num_ops` ops (all by default) from `start`."""
    return gf_task.numeric_walk(record, start, gf_task.forward_steps(record)[:num_ops])


def _numeric_backward(record: dict, start: int, num_ops: int | None = None) -> tuple[list[str], int]:
    """Undo the last `num_ops` ops (all by default) from `start`, `inv` facts before each
    undone multiplication."""
    return gf_task.numeric_walk(record, start, gf_task.undo_steps(record)[:num_ops])


# --- renderers (pure functions of the record) --------------------------------------------------
def forward_trace(record: dict) -> str:
    return gf_task.forward_trace(record)


def backward_trace(record: dict) -> str:
    return gf_task.backward_trace(record)


def wrong_guesses(record: dict, max_wrong: int = MAX_WRONG_GUESSES) -> list[int]:
    """The refuted candidates tried before the right one: 0..max_wrong distinct wrong values,
    a fixed function of the record id (so the trace is reproducible and bounded)."""
    rng = np.random.default_rng(zlib.crc32(f"guess:{record['id']}".encode()))
    others = [v for v in range(record["p"]) if v != record["answer"]]
    count = int(rng.integers(0, max_wrong + 1))
    return [int(v) for v in rng.choice(others, size=count, replace=False)]


def _try_candidate(record: dict, candidate: int) -> tuple[list[str], bool]:
    """guess, run the chain from the guess toward the known end, compare with the given value."""
    var = _unknown(record)
    lines = [f"guess {var} = {_s(record, candidate)}"]
    if var == "x":
        walk, reached = _numeric_forward(record, candidate)
    else:
        walk, reached = _numeric_backward(record, candidate)
    lines += walk
    hit = reached == record["given"]
    lines.append(f"check {_s(record, reached)} {'=' if hit else '!='} {_s(record, record['given'])}")
    return lines, hit


def guess_and_check_trace(record: dict) -> str:
    """Try candidate values of the unknown (a few wrong ones, then the right one), running the
    chain from each and comparing with the given value; refute each miss."""
    var = _unknown(record)
    lines: list[str] = []
    for candidate in [*wrong_guesses(record), record["answer"]]:
        tried, hit = _try_candidate(record, candidate)
        lines += tried
        lines.append(f"{var} {'=' if hit else '!='} {_s(record, candidate)}")
    return "\n".join(lines)


def substitution_pass(record: dict) -> str:
    """State the answer, substitute it back through the chain (forward for x, undoing for y)
    and confirm that it reproduces the given value."""
    var = _unknown(record)
    answer = record["answer"]
    if var == "x":
        walk, reached = _numeric_forward(record, answer)
    else:
        walk, reached = _numeric_backward(record, answer)
    return "\n".join([
        f"{var} = {_s(record, answer)}",
        *walk,
        f"check {_s(record, reached)} = {_s(record, record['given'])}",
        f"{var} = {_s(record, answer)}",
    ])


def verify_by_substitution_trace(record: dict) -> str:
    """Solve the short way (numerically from the known end), then substitute back."""
    solve = forward_trace(record) if record["kind"] == "evaluation" else backward_trace(record)
    return solve + "\n" + substitution_pass(record)


def meet_in_middle_trace(record: dict) -> str:
    """Split the chain: walk numerically from the known end over its half, carry the unknown
    symbolically over the other half, meet at the middle value and solve there."""
    k = len(record["ops"])
    if record["kind"] == "evaluation":
        first = (k + 1) // 2  # numeric v0 -> v_first, then y carried back to v_first
        numeric, middle = _numeric_forward(record, record["given"], first)
        maps, a, b = gf_task.affine_walk(record, "y", gf_task.undo_steps(record)[: k - first])
        lines = numeric + maps + gf_task.solve_lines(record, "y", a, b, middle)
    else:
        first = k // 2  # x carried over ops[:first], numeric vk back to v_first
        maps, a, b = gf_task.affine_walk(record, "x", gf_task.forward_steps(record)[:first])
        numeric, middle = _numeric_backward(record, record["given"], k - first)
        lines = numeric + maps + gf_task.solve_lines(record, "x", a, b, middle)
    return "\n".join(lines)


# --- the checker -------------------------------------------------------------------------------
def check_gf_trace(record: dict, trace: str) -> list[str]:
    """Every false or malformed claim of a GF trace (see the module docstring); never raises."""
    try:
        p = int(record["p"])
        value_of = {sym: int(i) for i, sym in record["symbols"].items()}
        var_value = {"x": int(gf_task.chain_values(record)[0]), "y": int(gf_task.chain_values(record)[1])}
        forward = _forward_ops(record)
        undo = _undo_ops(record)
    except Exception as err:  # noqa: BLE001 - a malformed record is reported, not raised
        return [f"record is malformed: {err!r}"]
    if not isinstance(trace, str) or not trace.strip():
        return ["trace is empty"]
    errors: list[str] = []
    state = _WalkState(start=int(record["given"]))
    for lineno, raw in enumerate(trace.strip().split("\n"), 1):
        line = raw.strip()
        index, body = gf_task.split_step_tag(line)
        try:
            problem = _check_line(body, record, p, value_of, var_value, forward, undo, state)
        except KeyError as err:
            problem = f"unknown symbol {err.args[0]!r}"
        if problem is None and index is not None:
            problem = gf_task.check_step_tag(record, index, body)
        if problem:
            errors.append(f"line {lineno} {line!r}: {problem}")
    return errors


class _WalkState:
    """What the previous lines established: the current value / map and the walk so far."""

    def __init__(self, start: int):
        self.value: int | None = start  # the value the next numeric step must start from
        self.map: tuple[int, str, int] | None = None  # the map the next map step must start from
        self.run: list[tuple[str, int]] | None = []  # (op, c) of the current anchored numeric walk
        self.map_run: list[tuple[str, int]] = []
        self.guess: int | None = None  # the candidate under test
        self.inverse: int | None = None  # the inverse stated by the line just before


def _is_prefix(run: list, *sequences: list) -> bool:
    return any(run == seq[: len(run)] for seq in sequences)


def _check_line(line, record, p, value_of, var_value, forward, undo, st: _WalkState) -> str | None:
    stated_inverse, st.inverse = st.inverse, None
    if m := _INV.match(line):
        st.inverse = value_of[m.group(2)]
        return _task_check(record, line)
    problem = _check_claim(line, record, value_of, var_value, forward, undo, st)
    if problem is None and stated_inverse is not None:
        step = _NUM.match(line) or _MAP.match(line)
        c = step and (step.group(3) if step.re is _NUM else step.group(5))
        if not step or step.group(2 if step.re is _NUM else 4) != "*" or value_of[c] != stated_inverse:
            return "does not multiply by the inverse stated on the line before"
    return problem


def _check_claim(line, record, value_of, var_value, forward, undo, st: _WalkState) -> str | None:
    v = lambda s: value_of[s]  # noqa: E731
    if m := _GUESS.match(line):
        st.value, st.run, st.map, st.guess = v(m.group(2)), [], None, v(m.group(2))
        return None
    if m := _CHECK.match(line):
        left, relation, right = m.groups()
        if st.value is not None and v(left) != st.value:
            return "compares a value the walk did not reach"
        if st.run is not None and st.run != forward and st.run != undo:
            return "checks before walking the whole chain"
        if v(right) != int(record["given"]):
            return "compares with something other than the given value"
        same = v(left) == v(right)
        st.value, st.run = None, None
        return None if same == (relation == "=") else "false comparison"
    if m := _REFUTE.match(line):
        var, sym = m.groups()
        if st.guess is None or v(sym) != st.guess:
            return "refutes a value that was not the guess under test"
        st.value, st.run, st.guess = None, None, None
        return None if var_value[var] != v(sym) else "refutes the true value"
    if m := _NUM.match(line):
        left, op, c, right = m.groups()
        if st.value is not None and v(left) != st.value:
            return "does not continue from the previous value"
        if st.run is not None:
            st.run.append((op, v(c)))
            if not _is_prefix(st.run, forward, undo):
                return "does not follow the chain's ops"
        st.value = v(right)
        return _task_check(record, line)
    if m := _MAP.match(line):
        a, var, b, op, c, _, _, _ = m.groups()
        start = (v(a), var, v(b))
        expected = st.map if st.map is not None else (1, var, 0)
        if start != expected:
            return "does not continue from the previous map"
        if st.map is None:
            st.map_run = []
        st.map_run.append((op, v(c)))
        if not _is_prefix(st.map_run, forward if var == "x" else undo):
            return "does not follow the chain's ops"
        a2, var2, b2 = m.group(6), m.group(7), m.group(8)
        st.map = (v(a2), var2, v(b2))
        st.value, st.run = None, None
        return _task_check(record, line)
    if m := _EQUATION.match(line):
        a, var, b, known = m.groups()
        expected = st.map if st.map is not None else (1, var, 0)
        if (v(a), var, v(b)) != expected:
            return "the equation's map is not the map carried so far"
        st.map, st.value, st.run = None, v(known), None  # the solve steps start from `known`
        return _task_check(record, line)
    if m := _CONCLUSION.match(line):
        if st.run and st.run != forward and st.run != undo:
            return "concludes before walking the whole chain"
        st.value, st.run, st.map = v(m.group(2)), [], None
        return _task_check(record, line)
    return "not a step of the trace grammar"


def _task_check(record: dict, line: str) -> str | None:
    errors = gf_task.check_trace(record, line)
    return errors[0].split(": ", 1)[-1] if errors else None


# --- the library -----------------------------------------------------------------------------
def _primitive(name: str, description: str, tags: set[str], render) -> Primitive:
    return Primitive(name=name, task="gf", description=description, tags=frozenset(tags), render=render,
                     check=check_gf_trace)


LIBRARY: dict[str, Primitive] = {
    p.name: p
    for p in (
        _primitive(
            "forward",
            "Walk the chain in its natural direction: compute each value numerically from the start, or, "
            "when the start is unknown, carry it as an affine map a*x+b and solve at the end.",
            {"forward", "symbolic"},
            forward_trace,
        ),
        _primitive(
            "backward",
            "Walk the chain from its far end: undo each operation numerically from the known result, or, "
            "when the result is unknown, carry it as an affine map through the inverse operations and solve.",
            {"backward_chaining", "symbolic"},
            backward_trace,
        ),
        _primitive(
            "guess_and_check",
            "Guess a value for the unknown, run the chain from it to the known end, compare with the given "
            "value; reject wrong guesses and try again until one matches.",
            {"hypothesis", "verification", "backtracking"},
            guess_and_check_trace,
        ),
        _primitive(
            "verify_by_substitution",
            "Solve numerically from the known end, then substitute the answer back through the whole chain "
            "and confirm that it reproduces the given value.",
            {"verification", "forward", "backward_chaining"},
            verify_by_substitution_trace,
        ),
        _primitive(
            "meet_in_middle",
            "Split the chain in two: compute numerically from the known end up to the middle, carry the "
            "unknown symbolically over the other half, and solve where the two halves meet.",
            {"subgoal", "decomposition", "symbolic"},
            meet_in_middle_trace,
        ),
    )
}

# Appended after a primitive by the compositions of the discover stage.
VERIFICATION_PASS = Primitive(
    name="substitution_check",
    task="gf",
    description="Substitute the answer back through the chain and confirm it reproduces the given value.",
    tags=frozenset({"verification"}),
    render=substitution_pass,
    check=check_gf_trace,
)
