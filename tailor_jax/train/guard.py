"""The non-finite guard of the trainers: a NaN/inf loss or gradient norm is caught at once.

Inside the jitted step `finite_flag` turns the loss and gradient norm (already computed) into one
boolean, and under the `skip` policy `keep_if_finite` leaves the parameters and optimizer state
as they were (the effect of optax's `apply_if_finite`, without changing the optimizer state's
structure, so checkpoints written before the guard still restore). On the host `NonFiniteGuard`
keeps each step's flag as a device scalar without reading it, and reads the pending flags only
where the loop reads its metrics anyway: at log time, and before every evaluation and save. So
there is no extra host sync per step, and no state that went non-finite is ever saved or exported.

Policies (the trainers' `nonfinite` option):
  stop (default): the first non-finite step stops the run with one line naming it and the last
      good checkpoint (TailorError, exit status 2; `tailor-jax run` starts no later stage).
  skip: the update of a non-finite step is not applied (the step still counts, and its data is
      consumed), skipped steps are counted (`nonfinite/skipped_steps` in the metrics), and the run
      stops as under `stop` after `max_consecutive_skips` skipped steps in a row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from tailor_jax.errors import TailorError

NONFINITE_POLICIES = ("stop", "skip")


def finite_flag(*values: jax.Array) -> jax.Array:
    """True when every value (scalars or arrays) is finite; for use inside jit."""
    return jnp.all(jnp.stack([jnp.isfinite(v).all() for v in values]))


def keep_if_finite(finite: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `finite`, else `old` (leaf by leaf); for use inside jit."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


class NonFiniteError(TailorError):
    """Training produced NaN/inf (the `stop` policy, or too many consecutive skipped steps)."""


class NonFiniteGuard:
    """Host side of the guard for one trainer (`stage` names it in messages and config keys)."""

    def __init__(self, stage: str, policy: str, max_consecutive_skips: int):
        if policy not in NONFINITE_POLICIES:
            raise TailorError(f"{stage}.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {policy!r}")
        self.stage, self.policy, self.max_consecutive_skips = stage, policy, max_consecutive_skips
        self.skipped = 0  # steps skipped in this process (not carried over a resume)
        self.consecutive = 0
        self._pending: list[tuple[int, Any]] = []

    def record(self, step: int, finite: Any) -> None:
        """Keep step `step`'s flag (a device scalar or a bool); nothing is read here."""
        self._pending.append((step, finite))

    def check(self, last_checkpoint: Callable[[], str]) -> None:
        """Read the pending flags (one transfer); raise NonFiniteError as the policy says.

        `last_checkpoint()` describes the newest checkpoint on disk, for the message; it is called
        only when a message is written (it lists the checkpoint directory).
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = jax.device_get([flag for _, flag in pending])
        for (step, _), finite in zip(pending, flags):
            if bool(finite):
                self.consecutive = 0
                continue
            if self.policy == "stop":
                raise NonFiniteError(
                    f"{self.stage} step {step}: the loss or gradient norm is NaN or inf; stopped ({self.stage}.nonfinite: "
                    f"stop), nothing after the last good checkpoint was saved ({last_checkpoint()}); lower "
                    f"{self.stage}.optimizer.lr, or set {self.stage}.nonfinite=skip to skip such steps"
                )
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive >= self.max_consecutive_skips:
                raise NonFiniteError(
                    f"{self.stage} step {step}: {self.consecutive} steps in a row had a NaN or inf loss or gradient norm "
                    f"and were skipped ({self.stage}.max_consecutive_skips: {self.max_consecutive_skips}); stopped, the last "
                    f"good checkpoint is {last_checkpoint()}; lower {self.stage}.optimizer.lr"
                )

    def metrics(self) -> dict[str, float]:
        return {"nonfinite/skipped_steps": float(self.skipped)} if self.policy == "skip" else {}


def describe_last_checkpoint(checkpointer) -> str:
    """The newest checkpoint directory of a `Checkpointer` (for messages), or that there is none."""
    steps = checkpointer.all_steps()
    return str(checkpointer.step_dir(max(steps))) if steps else f"none in {checkpointer.directory}"
