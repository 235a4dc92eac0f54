"""GF(p) operation chains: our reconstruction of the "Select and Improve" arithmetic task.

A chain v0 -op1-> v1 -> ... -opk-> vk over GF(p) (p = 11 or 13), each op one of `+c`, `-c`,
`*c` with c != 0. Numerals are written as two-letter syllables through a seeded bijection,
so pretrained arithmetic does not help. Two kinds of problem:

- `evaluation`: v0 is given, the answer is vk (the unknown output is called `y`);
- `inversion`: vk is given, the answer is v0 (the unknown input is called `x`).

Two trace renderers (pure functions over a record):

- `forward_trace` walks the chain in its natural direction: numerically on evaluation,
  carrying x as an affine map `a*x+b` on inversion and solving at the end;
- `backward_trace` walks it from the far end: undoing each op numerically on inversion,
  carrying y as an affine map through the inverse ops on evaluation and solving at the end.

Trace grammar (one line per step, field values as symbols only; see docs/tasks-gf.md):

    num_step   := [TAG] SYM OP SYM "=" SYM    (2) ka + mo = ri
    map_step   := [TAG] MAP OP SYM "=" MAP    (1) bo*x+da * mo = mo*x+da
    inv_fact   := [TAG] "inv" SYM "=" SYM     (3) inv su = ko
    equation   := MAP "=" SYM                 mo*x+ri = te
    conclusion := VAR "=" SYM                 x = ko
    MAP := SYM "*" VAR "+" SYM ;  VAR := "x" | "y" ;  OP := "+" | "-" | "*"
    TAG := "(" i ")"   the tag of the op the line applies or undoes: its position 1..k, or
                       with `tag_pool` N its entry of the record's `tags` (sorted, from 1..N)

The question tags its ops the same way: "apply (1) + ka, (2) * mo in order".

Tokens are separated by single spaces; a MAP is one token.

Modules: `chain` (arithmetic, symbols, renderers), `checker` (the step checker), `task` (the `Task`).
"""

from tailor_jax.tasks.gf.chain import (  # noqa: F401
    CONSONANTS, DATASET_RANGES, KINDS, MAX_DRAWS_PER_RECORD, MAX_STEPS, MIN_STEPS, OPS, PRIMES, RENDERERS, STRATEGIES,
    SYLLABLES, Step, VOWELS, affine_walk, apply_op, backward_trace, chain_values, forward_steps, forward_trace, inverse,
    mixed_strategy, numeric_walk, render_question, run_chain, solve_lines, step_tag, symbol, symbol_table, tag_labels,
    undo_op, undo_steps, unrun_chain,
)
from tailor_jax.tasks.gf.checker import (  # noqa: F401
    check_step_tag, check_trace, split_step_tag,
)
from tailor_jax.tasks.gf.task import (  # noqa: F401
    GFChain,
)


TASK_CLASS = GFChain
