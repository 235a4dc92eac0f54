"""Knights & Knaves reasoning primitives: programmatic renderers of differently structured
chains of thought, each with a step checker that re-verifies every claim against the record.

Every trace is a list of lines; the checkers parse each line, evaluate every claim about a
statement with the task's Kleene evaluator (`tasks.kk.evaluate`) under the roles the trace has
established at that point, and verify every "this branch is impossible" claim by the task's
truth tables (no consistent assignment extends the roles). An unrecognised line is a problem.


Primitives (see docs/primitives-kk-igsm.md for examples and the size figures):
  assume_refute_dfs        the task's own depth-first assume-and-refute trace
  case_enumeration         all 2^n cases in order, each stopped at its first broken statement;
                           a broken statement already settled by a prefix of the roles rules out
                           the whole block of cases sharing that prefix in one line
  forced_role_propagation  deduce roles forced by single statements, branch only when stuck
  statement_analysis       each statement's allowed local role combinations, then joined
  answer_first_verify      state the answer, then verify every statement under it
  with_self_verification   assume_refute_dfs plus a final check of every statement
                           (`with_verification(base)` composes any primitive with that check)
  error_recovery           a deliberately wrong guess, propagation to a contradiction,
                           backtracking, then propagation to the answer

One module per family: `dfs`, `cases`, `propagation`, `statement_analysis`, `verification`;
`common` holds the puzzle view and the claim checker they share.
"""

from __future__ import annotations

from collections.abc import Callable

from tailor_jax.primitives.base import Primitive
from tailor_jax.primitives.kk.cases import check_case_enumeration, render_case_enumeration
from tailor_jax.primitives.kk.dfs import check_dfs, render_dfs
from tailor_jax.primitives.kk.propagation import FORCED_STYLE, RECOVERY_STYLE, check_propagation, render_propagation
from tailor_jax.primitives.kk.statement_analysis import check_statement_analysis, render_statement_analysis
from tailor_jax.primitives.kk.verification import (
    check_answer_first, check_final_check, render_answer_first, render_final_check, with_verification,
)

# --- the library ---------------------------------------------------------------------------
def _primitive(name: str, description: str, tags: set[str], render: Callable, check: Callable) -> Primitive:
    return Primitive(name, "kk", description, frozenset(tags), render, check)


ASSUME_REFUTE_DFS = _primitive(
    "assume_refute_dfs",
    "Go through the people in order: assume a role for the next person, check every statement whose "
    "truth is already settled, drop the assumption at the first contradiction, and back up when "
    "neither role works.",
    {"hypothesis", "backtracking", "verification"},
    render_dfs, check_dfs,
)
CASE_ENUMERATION = _primitive(
    "case_enumeration",
    "List every assignment of roles in a fixed order. Check each one statement by statement and stop "
    "at its first broken statement; when that break is already decided by the first few roles, rule "
    "out every case that shares them at once. The single surviving case is the answer.",
    {"enumeration", "verification"},
    render_case_enumeration, check_case_enumeration,
)
FORCED_ROLE_PROPAGATION = _primitive(
    "forced_role_propagation",
    "Start from statements that fix someone's role on their own, pass every new role on to the "
    "statements that mention that person, and only when no statement forces anything, suppose a "
    "role and follow it until it fits or breaks.",
    {"propagation", "forward", "hypothesis", "backtracking"},
    lambda record: render_propagation(record, FORCED_STYLE),
    lambda record, trace: check_propagation(record, trace, FORCED_STYLE),
)
STATEMENT_ANALYSIS = _primitive(
    "statement_analysis",
    "Work bottom-up: for each statement alone, list the role combinations of the people it involves "
    "that are possible (a knight's statement true, a knave's false); then combine the lists one by one "
    "until a single option remains.",
    {"decomposition", "enumeration", "subgoal"},
    render_statement_analysis, check_statement_analysis,
)
ANSWER_FIRST_VERIFY = _primitive(
    "answer_first_verify",
    "State the full assignment of roles you believe is right, then verify it statement by statement: "
    "each knight's statement must be true and each knave's false.",
    {"hypothesis", "verification"},
    render_answer_first, check_answer_first,
)
WITH_SELF_VERIFICATION = with_verification(ASSUME_REFUTE_DFS, name="with_self_verification")
ERROR_RECOVERY = _primitive(
    "error_recovery",
    "Guess a role, follow what it forces until a statement breaks, notice the contradiction, back up "
    "and take the opposite role, then continue until every role is known.",
    {"error_recovery", "backtracking", "hypothesis", "propagation"},
    lambda record: render_propagation(record, RECOVERY_STYLE),
    lambda record, trace: check_propagation(record, trace, RECOVERY_STYLE),
)

LIBRARY: dict[str, Primitive] = {
    p.name: p
    for p in (
        ASSUME_REFUTE_DFS, CASE_ENUMERATION, FORCED_ROLE_PROPAGATION, STATEMENT_ANALYSIS,
        ANSWER_FIRST_VERIFY, WITH_SELF_VERIFICATION, ERROR_RECOVERY,
    )
}  # fmt: skip

# Appended after the library primitives that do not verify by the compositions of the discover
# stage ("forced_role_propagation+final_check", ...): the final self-verification pass.
VERIFICATION_PASS = _primitive(
    "final_check",
    "Check every statement once more against the final roles.",
    {"verification"},
    render_final_check, check_final_check,
)
