"""iGSM: synthetic grade-school math after Ye, Xu, Li and Allen-Zhu 2024 ("Physics of Language
Models: Part 2.1"). See docs/tasks-igsm.md for the construction and what differs from the paper.

A problem is built in four steps, all from one numpy stream per record:

1. Structure graph: d in {2, 3, 4} layers, a consecutive slice of one of four 4-level hierarchies
   (`names.py`), 2..4 items per layer, edges only between adjacent layers, every lower item
   with at least one parent, e edges in total (op <= e <= the preset's max_edge).
2. Parameters: one instance parameter per edge ("each X's Y") and the abstract parameters
   ("the total number of Ks in X"), whose value is fixed by the structure: the sum of X's K items
   when K is the next layer, else the sum over X's children C of (X's C) * (C's K total).
3. Dependency graph, grown backwards from the question: every necessary instance parameter gets
   at most 4 parents (earlier parameters and the random-constant source), sampled so that the
   total op count (each parameter costs max(1, in-degree - 1), constant source included) reaches
   `op` exactly; the other instance parameters become distractors with random dependencies.
   Draws that miss `op` are retried (bounded).
4. Text: one sentence per instance parameter, shuffled, question last; the solution defines the
   necessary parameters in a random topological order, one sentence each, all arithmetic mod 23.

Modules: `graph` (structure and dependency graphs, values, orders), `text` (sentences and the
solution writer), `task` (records, the independent solver, the `Task`), `names` (item lists).
"""

from tailor_jax.tasks.igsm.graph import (
    ABSTRACT, INSTANCE, MAX_PARENTS, MODULUS, PRESETS, SPLITS, TEST_HASH_CUTOFF, InstanceDef, Preset, Ref, Structure,
    abstract_parameters, op_count,
)
from tailor_jax.tasks.igsm.task import IGSM, build_problem, solve_graph
from tailor_jax.tasks.igsm.text import join_names, mention, phrase, question_text, solution_sketch, template_split, write_solution

TASK_CLASS = IGSM

__all__ = [
    "ABSTRACT", "INSTANCE", "MAX_PARENTS", "MODULUS", "PRESETS", "SPLITS", "TEST_HASH_CUTOFF", "IGSM", "InstanceDef",
    "Preset", "Ref", "Structure", "TASK_CLASS", "abstract_parameters", "build_problem", "join_names", "mention",
    "op_count", "phrase", "question_text", "solution_sketch", "solve_graph", "template_split", "write_solution",
]
