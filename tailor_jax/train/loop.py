"""The training shell shared by SFT (`train/sft.py`) and GRPO (`train/grpo/trainer.py`).

A trainer supplies its state and three things that differ between them: one training step, an
evaluation, and its data position for a checkpoint (a `Trainer`). Everything around them is
written once, here: the run directory (`open_run_dir`), the checkpointer and exact restore into
the `TrainState`, the metrics writer (JSONL, TensorBoard, optional W&B), the progress bar, the
preemption (SIGTERM/SIGINT) handler, the non-finite guard (train/guard.py) and the cadence of
logging, periodic evaluation and saving, and the `finally` that closes it all.

Per step, in this order: the trainer's step -> its finite flag to the guard (not read) -> at log
steps (`log_every`, eval steps, the last step) the guard is read, then the trainer's metrics ->
at eval steps (`eval_every`, the last step) the trainer evaluates -> one metrics record for the
step (its training and evaluation metrics together) -> at save steps
(`checkpoint.every_steps`, the last step, a preemption) the guard is read and a checkpoint is
written -> after a preemption the loop stops. So no non-finite state is ever saved, and a resumed
run continues from exactly the state, RNG and data position it saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from tqdm import tqdm

from tailor_jax.atomic import one_writer
from tailor_jax.config import CheckpointConfig, config_to_dict, dump_config
from tailor_jax.errors import TailorError
from tailor_jax.train.checkpoint import Checkpointer, TrainCheckpoint
from tailor_jax.train.guard import NonFiniteGuard, describe_last_checkpoint
from tailor_jax.train.metrics import MetricsWriter, Progress, WandbConfig
from tailor_jax.train.preemption import install_preemption_handler
from tailor_jax.train.state import TrainState


def check_run_dir(run_dir: str | Path) -> Path:
    """`run_dir` as a Path; fails (one line) if it names a file. Call before any work."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TailorError(f"run_dir {run_dir} is a file; give a directory")
    return run_dir


def open_run_dir(cfg: Any) -> Path:
    """Create `cfg.run_dir` and write the resolved config to `config.yaml` in it (process 0)."""
    run_dir = check_run_dir(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        dump_config(cfg, run_dir / "config.yaml")
    return run_dir


def stage_log(stage: str, message: str) -> None:
    """One line to stderr from process 0, as `tailor-jax <stage>: message`."""
    if jax.process_index() == 0:
        print(f"tailor-jax {stage}: {message}", file=sys.stderr, flush=True)


def print_metrics(step: int, metrics: Mapping[str, float], *, digits: int = 4, prefix: str = "eval/") -> None:
    """`step N: name value, ...` for the metrics whose names start with `prefix`, above the bar."""
    shown = {k: v for k, v in metrics.items() if k.startswith(prefix)}
    if shown and jax.process_index() == 0:
        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.{digits}f}" for k, v in shown.items()))


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """What the shell needs from a trainer's config."""

    stage: str  # "sft" or "grpo": names the progress bar, the messages and the guard's config keys
    run_dir: Path
    steps: int
    log_every: int
    eval_every: int  # 0: evaluate only at the last step
    checkpoint: CheckpointConfig
    nonfinite: str
    max_consecutive_skips: int
    progress: bool
    wandb: WandbConfig | None
    config: dict  # the whole config as plain data: stored in each checkpoint and with the W&B run
    eval_at_start: bool = False  # evaluate (as step 0) before the first step of a fresh run

    @classmethod
    def of(cls, stage: str, cfg: Any, *, eval_every: int, eval_at_start: bool = False) -> LoopConfig:
        return cls(stage=stage, run_dir=Path(cfg.run_dir), steps=cfg.steps, log_every=cfg.log_every,
                   eval_every=eval_every, checkpoint=cfg.checkpoint, nonfinite=cfg.nonfinite,
                   max_consecutive_skips=cfg.max_consecutive_skips, progress=cfg.progress, wandb=cfg.wandb,
                   config=config_to_dict(cfg), eval_at_start=eval_at_start)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.run_dir / "checkpoints"


@dataclasses.dataclass
class StepOutput:
    metrics: Any  # whatever the trainer's `read_metrics` turns into floats at log steps
    finite: Any  # the step's finite flag (a device scalar or a bool), for the guard


class Trainer(Protocol):
    """What SFT and GRPO supply to `run_loop`."""

    def step(self, state: TrainState, step: int) -> tuple[TrainState, StepOutput]:
        """One training step (steps count from 1): the new state and its (unread) metrics."""

    def read_metrics(self, step: int, metrics: Any) -> dict[str, float]:
        """The step's metrics as floats; called at log steps only."""

    def progress(self, metrics: Mapping[str, float]) -> dict[str, Any]:
        """Keyword arguments for `Progress.update` from a logged record."""

    def evaluate(self, state: TrainState, step: int) -> dict[str, float]:
        """Evaluation metrics at `step` (step 0: before training); {} when there is nothing to evaluate."""

    def data_state(self, step: int) -> dict | None:
        """The data position to store in the checkpoint of `step` (called on every process)."""

    def restore_data(self, data_state: dict | None, step: int) -> None:
        """Continue from a restored checkpoint's data position."""

    def close(self) -> None:
        """Release what the trainer opened (called in the shell's `finally`)."""


@dataclasses.dataclass
class LoopResult:
    state: TrainState
    metrics: dict[str, float]  # the last logged metrics merged with the last evaluation
    history: list[dict]  # every record written (with "step"), step 0 included


def restore_into(state: TrainState, restored: TrainCheckpoint) -> TrainState:
    """`state` with a restored checkpoint's step, parameters, optimizer state and RNG (layouts kept)."""
    return state.replace(
        step=jax.device_put(jnp.asarray(restored.step, jnp.int32), state.step.sharding),
        params=restored.params, opt_state=restored.opt_state, rng=restored.rng_key,
    )


def run_loop(loop: LoopConfig, trainer: Trainer, state: TrainState) -> LoopResult:
    """Restore the newest intact checkpoint (if any), then train from its step to `loop.steps`.
    One process at a time trains in a run directory (process 0 holds its lock)."""
    primary = jax.process_index() == 0
    with one_writer(loop.run_dir, f"tailor-jax {loop.stage}") if primary else contextlib.nullcontext():
        return _run_loop(loop, trainer, state, primary)


def _run_loop(loop: LoopConfig, trainer: Trainer, state: TrainState, primary: bool) -> LoopResult:
    metrics_log = MetricsWriter(loop.run_dir, is_primary=primary, wandb=loop.wandb, config=loop.config)
    preemption = install_preemption_handler()
    guard = NonFiniteGuard(loop.stage, loop.nonfinite, loop.max_consecutive_skips)
    history: list[dict] = []
    last: dict[str, float] = {}

    def write(step: int, record: dict[str, float]) -> None:
        nonlocal last
        metrics_log.write(step, record)
        history.append({"step": step, **record})
        last = {**last, **record}

    try:
        with Checkpointer(loop.checkpoint_dir, loop.checkpoint) as checkpointer:
            check_guard = lambda: guard.check(lambda: describe_last_checkpoint(checkpointer))  # noqa: E731
            restored = checkpointer.restore_latest(TrainCheckpoint(0, state.params, state.opt_state, rng_key=state.rng))
            if restored is not None:
                state = restore_into(state, restored)
                trainer.restore_data(restored.data_state, restored.step)
            start = int(state.step) if restored is None else int(restored.step)
            if start >= loop.steps:
                stage_log(loop.stage, f"already trained {start} of {loop.steps} steps; nothing to do")
            if start == 0 and loop.eval_at_start:
                record = trainer.evaluate(state, 0)
                if record:
                    write(0, record)
            bar = Progress(loop.steps, initial_step=start, desc=loop.stage, enabled=loop.progress and primary)
            for step in range(start + 1, loop.steps + 1):
                state, out = trainer.step(state, step)
                guard.record(step, out.finite)  # read with the metrics, before an eval or a save
                final = step == loop.steps
                eval_due = bool(loop.eval_every and step % loop.eval_every == 0) or final
                record: dict[str, float] = {}
                if step % loop.log_every == 0 or eval_due:
                    check_guard()
                    record = trainer.read_metrics(step, out.metrics) | guard.metrics()
                    bar.update(step, **trainer.progress(record))
                if eval_due:
                    record |= trainer.evaluate(state, step)
                if record:
                    write(step, record)
                stop = preemption.reached(step)
                if checkpointer.should_save(step) or stop or final:
                    check_guard()
                    checkpointer.save(TrainCheckpoint(step, state.params, state.opt_state, state.rng,
                                                      trainer.data_state(step), loop.config))
                if stop:
                    stage_log(loop.stage, f"stopped by {preemption.signal_name} after step {step}; checkpoint saved, "
                                          "rerun the same command to resume")
                    break
            bar.close()
    finally:
        preemption.uninstall()
        metrics_log.close()
        trainer.close()
    return LoopResult(state, last, history)
