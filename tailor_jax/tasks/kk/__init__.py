"""Knights and Knaves (K&K): the logic-puzzle task of Xie et al. 2024, built as in
/work/shared/SPEC-tasks.md section 1.

Each of n people (2..8) makes one statement about who is a knight (always truthful) and who
is a knave (always lying); a problem is kept only if exactly one assignment of roles is
consistent with all statements. A statement is a nested tuple (nested lists in JSON):

    ("telling-truth", i)  person i is a knight        ("lying", i)  person i is a knave
    ("not", s)   ("and", s1, s2, ...)   ("or", s1, s2, ...)   ("->", s1, s2)   ("<=>", s1, s2)

Sampling per person with depth limit D and width limit W: a uniform 6-face die; at remaining
depth 1 or on face 0 a leaf (kind and target uniform, "I am lying" rejected); face 1 ->
not(leaf); 2 -> and, 3 -> or (width uniform in [2, W]); 4 -> "->"; 5 -> "<=>"; children at
depth - 1, duplicate children of one compound rejected.

Uniqueness is checked for all 2^n assignments at once: a statement's truth table is a Python
int whose bit `a` is its value under assignment `a` (bit i of `a` set = person i is a knight),
so and/or/not are single big-int operations and the count of consistent assignments is a
popcount. `solve` is a separate, plain brute-force evaluator.

Records carry an `"answer"` field equal to `"solution"` (list of bool, true = knight), so the
shared `Task.answer()` / `is_correct()` work unchanged. `format_answer` needs the names
(`format_answer(solution, names=record["names"])`); `target()` passes them.

Modules: `logic` (statements, truth tables, solvers), `sampling` (the generator's draws, counts of
distinct problems), `text` (English rendering, the trace, answer parsing), `task` (the `Task`).
"""

from tailor_jax.tasks.kk.logic import (  # noqa: F401
    LEAF_KINDS, MAX_DEPTH, MAX_PEOPLE, MAX_WIDTH, MIN_PEOPLE, OPERATORS, assignment_roles, brute_force_solutions,
    consistent_assignments, evaluate, knight_masks, statement_depth, statement_from_json, statement_to_json,
    statement_width, truth_table,
)
from tailor_jax.tasks.kk.sampling import (  # noqa: F401
    MAX_CHILD_DRAWS, MAX_DRAWS_PER_RECORD, StatementSampler, Uniform, distinct_problems,
)
from tailor_jax.tasks.kk.task import (  # noqa: F401
    KnightsAndKnaves,
)
from tailor_jax.tasks.kk.text import (  # noqa: F401
    CLOSING, NAME_POOL, OPENING, ROLE_WORD, SPEECH_TEMPLATES, assume_and_refute, join_names, parse_roles, render_quiz,
    render_statement, solution_text, solution_text_format,
)


TASK_CLASS = KnightsAndKnaves
