"""backward_decomposition: from the question down (what each needed parameter needs), then
compute bottom-up."""

from __future__ import annotations

import re

from tailor_jax.primitives.igsm.common import Checker, Problem, dependency_list, phrase_list, split_names
from tailor_jax.tasks.igsm import phrase


# --- backward_decomposition ----------------------------------------------------------------
BACKWARD_COMPUTE = "Now compute from the bottom up."
_GOAL = re.compile(r"Goal: (.+)\.")
_NEEDS = re.compile(r"(.+?) needs (.+)\.")
_GIVEN = re.compile(r"(.+?) is given as (\d+)\.")


def render_backward(record: dict) -> str:
    problem = Problem.of(record)
    lines = [f"Goal: {phrase(problem.question)}."]
    for ref in problem.necessary:
        if problem.deps(ref):
            lines.append(f"{phrase(ref)} needs {dependency_list(problem, ref)}.")
        else:
            lines.append(f"{phrase(ref)} is given as {problem.constant(ref)}.")
    lines.append(BACKWARD_COMPUTE)
    lines.append(problem.define_sentences(problem.post_order(), record["id"] + "/backward"))
    return "\n".join(lines)


def check_backward(record: dict, trace: str) -> list[str]:
    problem = Problem.of(record)
    c = Checker(problem)
    lines = trace.split("\n")
    if not lines or not (m := _GOAL.fullmatch(lines[0])):
        return ["the trace must open with 'Goal: <the question's parameter>.'"]
    if problem.by_phrase.get(m[1]) != problem.question:
        c.fail(f"the goal {m[1]!r} is not the question's parameter {phrase(problem.question)}")
    if BACKWARD_COMPUTE not in lines:
        return c.problems + ["no computation section"]
    split = lines.index(BACKWARD_COMPUTE)
    wanted, expanded = [problem.question], []
    for k, line in enumerate(lines[1:split], 2):
        where = f"line {k}"
        if g := _GIVEN.fullmatch(line):
            ref = c.dependency_claim(g[1], None, int(g[2]), where)
        elif n := _NEEDS.fullmatch(line):
            ref = c.dependency_claim(n[1], split_names(n[2]), None, where)
            wanted += [r for r in map(problem.by_phrase.get, split_names(n[2])) if r is not None]
        else:
            c.fail(f"{where}: unrecognised line {line!r}")
            continue
        if ref is not None:
            if ref not in wanted:
                c.fail(f"{where}: {phrase(ref)} was not yet asked for")
            if ref in expanded:
                c.fail(f"{where}: {phrase(ref)} is broken down twice")
            expanded.append(ref)
    missing = [r for r in dict.fromkeys(wanted) if r not in expanded]
    if missing:
        c.fail(f"never broken down: {phrase_list(missing)}")
    c.defines(" ".join(lines[split + 1 :]))
    c.answered()
    return c.problems
