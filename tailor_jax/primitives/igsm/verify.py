"""compute_then_verify: compute, then recompute every value directly from its definition."""

from __future__ import annotations

import re

from tailor_jax.primitives.igsm.common import Checker, OPS, Problem
from tailor_jax.tasks.igsm import ABSTRACT, INSTANCE, MODULUS, Ref, phrase


# --- compute_then_verify -----------------------------------------------------------------------
VERIFY_HEADER = "Verify each value against its definition:"
_CHECK = re.compile(r"Check (.+?) = ([0-9 +*()-]+?)(?: = (\d+)|, as given): matches ([A-Za-z])\.")


def recomputation(problem: Problem, ref: Ref) -> str:
    """The definition written with the parents' values, e.g. '5 * (3 + 4)' or '2 * 3 + 4 * 5'."""
    vals = [str(problem.values[p]) for p in problem.deps(ref)]
    if ref[0] == ABSTRACT:
        if all(p[0] == INSTANCE for p in problem.deps(ref)):
            return " + ".join(vals)
        return " + ".join(f"{vals[i]} * {vals[i + 1]}" for i in range(0, len(vals), 2))
    d = problem.defs[ref]
    if d.inner == "const":
        return str(d.const)
    inner = {"param": lambda: vals[0], "sum": lambda: " + ".join(vals), "diff": lambda: f"{vals[0]} - {vals[1]}"}[d.inner]()
    if d.combine == "none":
        return inner
    op = "+" if d.combine == "add" else "*"
    return f"{d.const} {op} {inner}" if d.inner == "param" else f"{d.const} {op} ({inner})"


def evaluate_arithmetic(text: str) -> int | None:
    """Value of an expression of non-negative integers, + - * and parentheses (None if malformed)."""
    tokens = re.findall(r"\d+|[-+*()]|\S", text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> int:
        token = take()
        if token == "(":
            value = expr()
            if take() != ")":
                raise ValueError
            return value
        if not token.isdigit():
            raise ValueError
        return int(token)

    def term() -> int:
        value = atom()
        while peek() == "*":
            take()
            value *= atom()
        return value

    def expr() -> int:
        value = term()
        while peek() in ("+", "-"):
            value = OPS[take()](value, term())
        return value

    try:
        value = expr()
        return value if pos == len(tokens) else None
    except (ValueError, IndexError):
        return None


def render_compute_verify(record: dict) -> str:
    problem = Problem.of(record)
    order = _kahn_reverse_names(problem)
    sentences = problem.define_sentences(order, record["id"] + "/verify")
    letters = dict(re.findall(r"Define (.+?) as ([A-Za-z]);", sentences))
    lines = [sentences, VERIFY_HEADER]
    for ref in order:
        value = problem.values[ref]
        shown = f"{recomputation(problem, ref)} = {value}" if problem.deps(ref) else f"{value}, as given"
        lines.append(f"Check {phrase(ref)} = {shown}: matches {letters[phrase(ref)]}.")
    return "\n".join(lines)


def _kahn_reverse_names(problem: Problem) -> list[Ref]:
    """A topological order taking, at each step, the ready parameter whose name sorts last."""
    done: list[Ref] = []
    while len(done) < len(problem.necessary):
        ready = [r for r in problem.necessary if r not in done and all(p in done for p in problem.deps(r))]
        done.append(max(ready, key=phrase))
    return done


def check_compute_verify(record: dict, trace: str) -> list[str]:
    problem = Problem.of(record)
    c = Checker(problem)
    lines = trace.split("\n")
    if VERIFY_HEADER not in lines:
        return ["no verification section"]
    split = lines.index(VERIFY_HEADER)
    c.defines(" ".join(lines[:split]))
    c.answered()
    verified: list[Ref] = []
    for k, line in enumerate(lines[split + 1 :], split + 2):
        m = _CHECK.fullmatch(line)
        if m is None:
            c.fail(f"line {k}: unrecognised line {line!r}")
            continue
        ref = c.ref(m[1], f"line {k}")
        if ref is None:
            continue
        value = evaluate_arithmetic(m[2])
        stated = int(m[3]) if m[3] is not None else value
        if m[3] is None and problem.deps(ref):
            c.fail(f"line {k}: {m[1]} is not a given number")
        if value is None or stated is None or value % MODULUS != stated:
            c.fail(f"line {k}: {m[2]} is {value if value is None else value % MODULUS} mod {MODULUS}, not {stated}")
        if m[2] != recomputation(problem, ref):
            c.fail(f"line {k}: the check of {m[1]} does not use its definition with the right values")
        if stated != problem.values[ref]:
            c.fail(f"line {k}: {m[1]} is {problem.values[ref]}, not {stated}")
        if c.symbols.get(ref) != m[4] or c.letters.get(m[4]) != stated:
            c.fail(f"line {k}: {m[4]} is not the letter of {m[1]} with value {stated}")
        verified.append(ref)
    if sorted(verified) != sorted(c.symbols):
        c.fail("not every computed value is verified exactly once")
    return c.problems
