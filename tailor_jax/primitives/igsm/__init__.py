"""iGSM reasoning primitives: programmatic renderers of differently structured solutions, each
with a step checker that re-verifies every claim against the record's graph.

All primitives keep the task's arithmetic sentence form ("Define X's Y as a; b = c + d = 3 + 4
= 7; so a = ..."; every number mod 23); the "Define" sentences are written by the task's own
solution writer (`tasks.igsm.write_solution`) for the order a primitive chooses, with letters drawn
from a generator seeded by the record id and the primitive name (deterministic).

Primitives (docs/primitives-kk-igsm.md has examples):
  forward_topological       the task's own solution (a random topological order)
  backward_decomposition    from the question down: what each needed parameter needs, then
                            compute bottom-up (post-order of that descent)
  dependencies_then_compute a dependency table of every needed parameter in computation order,
                            then the computation in that order
  compute_then_verify       compute, then recompute every value directly from its definition

Every check parses each "Define" sentence and verifies: the name is a parameter of the problem,
letters are fresh and defined before use, every step's symbols carry their values, every
result is the mod-23 arithmetic of its operands, the parameters and constants used are exactly
the definition's, and the value equals the one recomputed from the graph (`solve_graph`). Lists
of dependencies and recomputations are checked against the graph the same way.

One module per family: `forward`, `backward`, `dependencies`, `verify`; `common` holds the
problem view and the "Define" sentence checker they share.
"""

from __future__ import annotations

from collections.abc import Callable

from tailor_jax.primitives.base import Primitive
from tailor_jax.primitives.igsm.backward import (  # noqa: F401
    BACKWARD_COMPUTE, check_backward, render_backward,
)
from tailor_jax.primitives.igsm.common import (  # noqa: F401
    Checker, OPS, Problem, dependency_list, phrase_list, split_names,
)
from tailor_jax.primitives.igsm.dependencies import (  # noqa: F401
    DEPS_COMPUTE, DEPS_HEADER, check_dependencies, render_dependencies,
)
from tailor_jax.primitives.igsm.forward import (  # noqa: F401
    check_forward, render_forward,
)
from tailor_jax.primitives.igsm.verify import (  # noqa: F401
    VERIFY_HEADER, check_compute_verify, evaluate_arithmetic, recomputation, render_compute_verify,
)


# --- the library ---------------------------------------------------------------------------
def _primitive(name: str, description: str, tags: set[str], render: Callable, check: Callable) -> Primitive:
    return Primitive(name, "igsm", description, frozenset(tags), render, check)


FORWARD_TOPOLOGICAL = _primitive(
    "forward_topological",
    "Compute forward: define each needed quantity only after everything it depends on, one sentence "
    "each, with every arithmetic step written out mod 23, ending with the asked quantity.",
    {"forward"},
    render_forward, check_forward,
)
BACKWARD_DECOMPOSITION = _primitive(
    "backward_decomposition",
    "Start from the question: say what the asked quantity needs, then what each of those needs, down "
    "to given numbers; then compute from the bottom up, every step mod 23.",
    {"backward_chaining", "decomposition", "subgoal"},
    render_backward, check_backward,
)
DEPENDENCIES_THEN_COMPUTE = _primitive(
    "dependencies_then_compute",
    "First write a table of every quantity the question needs and what each one uses, simplest first; "
    "then compute them in that order, every step mod 23.",
    {"decomposition", "forward", "subgoal"},
    render_dependencies, check_dependencies,
)
COMPUTE_THEN_VERIFY = _primitive(
    "compute_then_verify",
    "Compute every needed quantity forward, mod 23; then verify each value by recomputing it directly "
    "from its definition with the values found, and confirm it matches.",
    {"forward", "verification"},
    render_compute_verify, check_compute_verify,
)

LIBRARY: dict[str, Primitive] = {
    p.name: p for p in (FORWARD_TOPOLOGICAL, BACKWARD_DECOMPOSITION, DEPENDENCIES_THEN_COMPUTE, COMPUTE_THEN_VERIFY)
}
