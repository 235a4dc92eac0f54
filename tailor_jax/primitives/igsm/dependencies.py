"""dependencies_then_compute: a dependency table of every needed parameter in computation
order, then the computation in that order."""

from __future__ import annotations

import re

from tailor_jax.primitives.igsm.common import Checker, Problem, dependency_list, split_names
from tailor_jax.tasks.igsm import Ref, phrase


# --- dependencies_then_compute ---------------------------------------------------------------
DEPS_HEADER = "Dependencies of every needed quantity:"
DEPS_COMPUTE = "Compute in this order:"
_USES = re.compile(r"- (.+?): (?:uses (.+)|the given number (\d+))\.")


def render_dependencies(record: dict) -> str:
    problem = Problem.of(record)
    order = problem.level_order()
    lines = [DEPS_HEADER]
    for ref in order:
        if problem.deps(ref):
            lines.append(f"- {phrase(ref)}: uses {dependency_list(problem, ref)}.")
        else:
            lines.append(f"- {phrase(ref)}: the given number {problem.constant(ref)}.")
    lines.append(DEPS_COMPUTE)
    sentences = problem.define_sentences(order, record["id"] + "/dependencies")
    lines += re.split(r"(?<=\.) (?=Define )", sentences)
    return "\n".join(lines)


def check_dependencies(record: dict, trace: str) -> list[str]:
    problem = Problem.of(record)
    c = Checker(problem)
    lines = trace.split("\n")
    if not lines or lines[0] != DEPS_HEADER or DEPS_COMPUTE not in lines:
        return ["the trace must list dependencies under its header, then compute"]
    split = lines.index(DEPS_COMPUTE)
    listed: list[Ref] = []
    for k, line in enumerate(lines[1:split], 2):
        u = _USES.fullmatch(line)
        if u is None:
            c.fail(f"line {k}: unrecognised line {line!r}")
            continue
        names = None if u[3] is not None else split_names(u[2])
        ref = c.dependency_claim(u[1], names, None if u[3] is None else int(u[3]), f"line {k}")
        if ref is not None:
            if any(p not in listed for p in problem.deps(ref)):
                c.fail(f"line {k}: {u[1]} is listed before what it uses")
            listed.append(ref)
    if sorted(listed) != sorted(problem.necessary):
        c.fail("the table does not list exactly the needed quantities, once each")
    c.defines(" ".join(lines[split + 1 :]))
    order = [ref for ref in c.symbols]
    if order != [r for r in listed if r in c.symbols]:
        c.fail("the computation does not follow the listed order")
    c.answered()
    return c.problems
