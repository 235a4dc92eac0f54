"""Training checkpoints on top of Orbax: save, keep-N / best-N, resume, preemption.

A checkpoint holds one `TrainCheckpoint`: the step (number of finished optimizer steps), the
model parameters and the optimizer state (any pytrees of arrays, e.g. `nnx.State`), the RNG
key (raw key data plus its implementation name), the data-iterator state and the resolved
config (both JSON). Each is an Orbax item of one step directory:

    <dir>/<step>/{params,opt_state,meta,data_state,config}/  +  tailor_manifest.json

Completeness. Orbax writes a step under a temporary name and renames it when every item is
written, so an interrupted save never looks like a checkpoint. When Orbax has finalized a
step we "seal" it: `tailor_manifest.json` lists every file with its size and CRC-32
(tailor_jax.train.manifest). A save refuses a state holding NaN/inf, and a failed write raises
TailorError (one line) before any older step is deleted, so keep-N rotation only ever removes
older steps once a newer, sealed, finite one exists.

Resume. `restore_latest` walks the steps newest first: a step whose manifest is missing or
unreadable, whose files are missing, truncated or changed (checksum), or whose restored arrays
are not all finite, is skipped; the newest intact step is restored, and the skipped newer ones
are reported in one line each and moved aside to `<step>.corrupt` (never deleted). A run killed
while sealing its first checkpoint leaves one unsealed step and nothing else: it is moved aside to
`<step>.unsealed` and the run starts from the beginning, as if that save had not begun. In every
other case where there are steps but none is intact, TailorError is raised and no file is
touched. A restore that fails for any other reason (e.g. the model no longer matches the
checkpoint) raises TailorError and touches no file.

Typical loop:

    preemption = install_preemption_handler()  # tailor_jax.train.preemption
    with Checkpointer(run_dir / "checkpoints", cfg.checkpoint) as checkpointer:
        restored = checkpointer.restore_latest(TrainCheckpoint(0, abstract_params, abstract_opt))
        start = restored.step if restored else 0
        for step in range(start + 1, total_steps + 1):
            ...  # one optimizer step
            stop = preemption.requested
            if checkpointer.should_save(step) or stop or step == total_steps:
                checkpointer.save(TrainCheckpoint(step, params, opt_state, rng, data_state, cfg_dict))
            if stop:
                break
    # leaving the `with` waits for asynchronous saves to be written
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as preservation_lib  # public: LatestN, BestN, AnyPreservationPolicy

from tailor_jax.config import CheckpointConfig
from tailor_jax.errors import TailorError
from tailor_jax.train.manifest import (  # noqa: F401 (write_manifest re-exported)
    MANIFEST_NAME, UNSEALED, check_manifest, write_manifest,
)

CORRUPT_SUFFIX = ".corrupt"
UNSEALED_SUFFIX = ".unsealed"
ITEM_NAMES = ("params", "opt_state", "meta", "data_state", "config")
_FORMAT_VERSION = 1


@dataclasses.dataclass
class TrainCheckpoint:
    """Everything needed to continue training exactly where it stopped.

    As a restore target, `params`/`opt_state` give the structure, dtypes and shardings to restore
    into (concrete arrays or `jax.ShapeDtypeStruct`s, e.g. from `nnx.eval_shape`); `opt_state`
    None skips the optimizer state; `rng_key`, if an array, gives the sharding of the restored key.
    """

    step: int
    params: Any
    opt_state: Any = None
    rng_key: jax.Array | None = None
    data_state: dict | None = None
    config: dict | None = None


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with the arrays' shardings) for a pytree of arrays: a restore target."""

    def to_abstract(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)

    return jax.tree.map(to_abstract, tree)


# --------------------------------------------------------------------------------------------
# Finite values: nothing holding NaN/inf is saved, and a restored step must hold none.
@jax.jit
def _tree_all_finite(tree) -> jax.Array:
    flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def all_finite(tree: Any) -> bool:
    """True when every floating-point array in the pytree is finite (one small device sync)."""
    return bool(_tree_all_finite(tree))


class _SealingCheckpointManager(ocp.CheckpointManager):
    """Orbax's manager plus a manifest written as soon as a step is finalized.

    `_finalize_checkpoint` runs (in the finalize thread for async saves) after every item is
    committed and the step directory has its final name, and before old steps are deleted
    (`CheckpointManager._finalize`). Orbax itself only logs a failed write there and then deletes
    the old steps anyway; here any failure (a write error, a step directory that never got its
    final name, a manifest that cannot be written) raises instead, which skips the deletion, so a
    sealed newer step always exists before an older one disappears. The error reaches the
    training loop from the next `save` or `wait`. Pinned to orbax 0.12.
    """

    def _finalize_checkpoint(self, step: int):
        if jax.process_index() == 0:
            self.check_for_errors()
        super()._finalize_checkpoint(step)
        if jax.process_index() == 0:
            step_dir = self._get_write_step_directory(step, self.directory)
            if not step_dir.exists():
                raise OSError(f"step {step} was not committed to {step_dir}")
            write_manifest(step_dir)


def _stderr(message: str) -> None:
    print(f"tailor-jax: {message}", file=sys.stderr, flush=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


# --------------------------------------------------------------------------------------------
class Checkpointer:
    """Save and restore `TrainCheckpoint`s in one directory (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        cfg: CheckpointConfig = CheckpointConfig(),
        *,
        log: Callable[[str], None] = _stderr,
    ):
        # Orbax's array writers require an absolute path; a run_dir given relative to the working
        # directory (the README's `runs/quickstart`) is made absolute here.
        self.directory = epath.Path(os.path.abspath(directory))
        self.cfg = cfg
        self._log = log
        self._failed = False
        policies: list[Any] = [preservation_lib.LatestN(n=cfg.keep)]
        best_fn = None
        if cfg.keep_best:
            metric = cfg.best_metric
            best_fn = lambda metrics: float(metrics[metric])  # noqa: E731
            policies.append(
                preservation_lib.BestN(
                    get_metric_fn=best_fn,
                    reverse=cfg.best_mode == "min",  # BestN keeps the last n after sorting
                    n=cfg.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save,
            preservation_policy=preservation_lib.AnyPreservationPolicy(policies),
            best_fn=best_fn,  # also makes Orbax store the metrics next to each step
            best_mode=cfg.best_mode,
            create=True,
        )
        try:
            self._manager = _SealingCheckpointManager(self.directory, options=options, item_names=ITEM_NAMES)
        except (OSError, ValueError) as err:
            raise TailorError(f"cannot open checkpoint directory {self.directory}: {_first_line(err)}") from None
        self._report_partial_saves()

    # --- context manager: always wait for pending asynchronous saves ---------------------
    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def wait(self) -> None:
        """Block until asynchronous saves are written (call before exiting); TailorError if one failed."""
        with self._save_errors():
            self._manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001 - the failure was reported by wait()
                if not self._failed:
                    raise

    @contextlib.contextmanager
    def _save_errors(self):
        """A failed write (disk full, read-only, ...) as one line naming what is still on disk."""
        try:
            yield
        except TailorError:
            raise
        except Exception as err:  # Orbax/TensorStore/OS errors come in many types
            self._failed = True
            try:
                self._manager.reload()  # Orbax already dropped the steps it meant to delete from its list
                kept = sorted(s for s in self._manager.all_steps() if (self.step_dir(s) / MANIFEST_NAME).exists())
            except Exception:  # noqa: BLE001
                kept = []
            raise TailorError(
                f"saving a checkpoint in {self.directory} failed ({_first_line(err)}); the sealed checkpoints "
                f"{kept or 'on disk'} were kept; free space or fix permissions, then rerun to resume from them"
            ) from None

    # --- queries -------------------------------------------------------------------------
    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        """Steps Orbax considers finalized (not checked against their manifests)."""
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step whose files match its manifest (moves nothing)."""
        self.wait()
        for step in sorted(self.all_steps(), reverse=True):
            if self._check_files(step) is None:
                return step
        return None

    def _check_files(self, step: int) -> str | None:
        """`check_manifest` of a step: read by process 0 only (a checksum reads every byte), the
        verdict shared with the other processes."""
        if jax.process_count() == 1:
            return check_manifest(self.step_dir(step))
        from jax.experimental import multihost_utils

        problem = check_manifest(self.step_dir(step)) if jax.process_index() == 0 else None
        encoded = np.zeros(512, np.uint8)
        if problem is not None:
            data = problem.encode()[:511]
            encoded[: len(data) + 1] = np.frombuffer(data + b"\0", np.uint8)
            encoded[-1] = 1
        encoded = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
        return bytes(encoded[:-1]).split(b"\0")[0].decode(errors="replace") if encoded[-1] else None

    def best_step(self) -> int | None:
        """The best kept step by `best_metric` (the latest step if keep_best is 0)."""
        return self._manager.best_step()

    def should_save(self, step: int) -> bool:
        return step % self.cfg.every_steps == 0

    # --- save ----------------------------------------------------------------------------
    def save(self, checkpoint: TrainCheckpoint, *, metrics: dict[str, float] | None = None) -> bool:
        """Start saving `checkpoint` (asynchronously if `async_save`); False if that step exists.

        `metrics` ranks checkpoints for keep_best (it must then contain `best_metric`).
        """
        step = int(checkpoint.step)
        if step < 0:
            raise TailorError(f"checkpoint step must be >= 0, got {step}")
        if step in self._manager.all_steps():
            return False
        if metrics is not None:
            metrics = {name: float(value) for name, value in metrics.items()}
            if self.cfg.keep_best and self.cfg.best_metric not in metrics:
                raise TailorError(
                    f"checkpoint metrics {sorted(metrics)} lack best_metric {self.cfg.best_metric!r}; "
                    "pass it or change checkpoint.best_metric"
                )
        if not all_finite((checkpoint.params, checkpoint.opt_state)):
            previous = self.all_steps()
            raise TailorError(
                f"refusing to save step {step}: its parameters or optimizer state hold NaN or inf; the last "
                + (f"checkpoint is {self.step_dir(max(previous))}" if previous else f"checkpoint: none in {self.directory}")
            )
        items: dict[str, Any] = {
            "params": ocp.args.StandardSave(checkpoint.params),
            "meta": ocp.args.JsonSave(
                {"format": _FORMAT_VERSION, "step": step, "time": time.time(), "rng": _rng_to_json(checkpoint.rng_key)}
            ),
        }
        if checkpoint.opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(checkpoint.opt_state)
        if checkpoint.data_state is not None:
            items["data_state"] = ocp.args.JsonSave(checkpoint.data_state)
        if checkpoint.config is not None:
            items["config"] = ocp.args.JsonSave(checkpoint.config)
        with self._save_errors():
            return bool(self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True))

    # --- restore -------------------------------------------------------------------------
    def restore(self, target: TrainCheckpoint, step: int | None = None) -> TrainCheckpoint:
        """Restore `step` (default: the newest complete one) into `target`'s structure/shardings.

        Unlike `restore_latest`, an incomplete step raises TailorError instead of being moved.
        """
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise TailorError(f"no complete checkpoint in {self.directory}; train first or fix the path")
        elif step not in self.all_steps():
            raise TailorError(f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}")
        elif (problem := self._check_files(step)) is not None:
            raise TailorError(f"checkpoint {self.step_dir(step)} is incomplete or corrupted: {problem}")
        restored = self._restore_step(step, target)
        if not all_finite((restored.params, restored.opt_state)):
            raise TailorError(f"checkpoint {self.step_dir(step)} holds NaN or inf; restore an earlier step")
        return restored

    def restore_latest(self, target: TrainCheckpoint) -> TrainCheckpoint | None:
        """Resume point: the newest intact checkpoint (files match the manifest, arrays finite),
        or None when the directory holds no usable checkpoint and nothing in it is damaged.

        Unusable newer steps are reported (one line each) and moved aside to `<step>.corrupt`,
        but only once an intact step has been restored. A directory whose only step is unsealed
        (the process died while saving the run's first checkpoint) is the same as an empty one:
        that step is moved aside to `<step>.unsealed` and training starts from the beginning.
        Otherwise, when no step is intact, this raises TailorError and moves nothing.
        """
        self.wait()
        steps = sorted(self.all_steps(), reverse=True)
        unusable: list[tuple[int, str]] = []
        for step in steps:
            problem = self._check_files(step)
            if problem is None:
                restored = self._restore_step(step, target)
                if all_finite((restored.params, restored.opt_state)):
                    for bad_step, bad_problem in unusable:
                        self._set_aside(bad_step, bad_problem)
                    return restored
                problem = "its arrays hold NaN or inf"
            unusable.append((step, problem))
        if len(steps) == 1 and unusable == [(steps[0], UNSEALED)]:
            self._set_aside(
                steps[0], UNSEALED, suffix=UNSEALED_SUFFIX, then="no earlier checkpoint: training from the start"
            )
            return None
        if unusable:
            listed = "; ".join(f"step {step}: {problem}" for step, problem in unusable)
            raise TailorError(
                f"no intact checkpoint in {self.directory} ({listed}); nothing was moved or deleted: restore the "
                "directory from a copy, or move it away to train from the start"
            )
        return None

    def _restore_step(self, step: int, target: TrainCheckpoint) -> TrainCheckpoint:
        step_dir = self.step_dir(step)
        present = {name for name in ITEM_NAMES if (step_dir / name).exists()}
        if target.opt_state is not None and "opt_state" not in present:
            raise TailorError(f"checkpoint {step_dir} has no optimizer state; restore with opt_state=None")
        items: dict[str, Any] = {
            "params": ocp.args.StandardRestore(abstract_like(target.params)),
            "meta": ocp.args.JsonRestore(),
        }
        if target.opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_like(target.opt_state))
        for name in ("data_state", "config"):
            if name in present:
                items[name] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # Orbax/TensorStore raise many types; report one line.
            raise TailorError(
                f"checkpoint {step_dir} does not fit the model/optimizer being restored ({_first_line(err)}); "
                "use the config that wrote it or a fresh checkpoint directory"
            ) from None
        meta = restored["meta"]
        return TrainCheckpoint(
            step=int(meta["step"]),
            params=restored["params"],
            opt_state=restored["opt_state"] if target.opt_state is not None else None,
            rng_key=_rng_from_json(meta.get("rng"), target.rng_key),
            data_state=restored["data_state"] if "data_state" in present else None,
            config=restored["config"] if "config" in present else None,
        )

    # --- unusable checkpoints ------------------------------------------------------------
    def _set_aside(
        self, step: int, problem: str, *, suffix: str = CORRUPT_SUFFIX, then: str = "using an earlier checkpoint"
    ) -> None:
        source = self.step_dir(step)
        destination = self.directory / f"{step}{suffix}"
        n = 1
        while destination.exists():
            destination = self.directory / f"{step}{suffix}{n}"
            n += 1
        if jax.process_index() == 0:
            source.rename(destination)
            self._log(
                f"checkpoint {source} is incomplete or corrupted ({problem}); "
                f"moved it to {destination.name}; {then}"
            )
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("tailor_checkpoint_set_aside")
        self._manager.reload()

    def _report_partial_saves(self) -> None:
        if jax.process_index() != 0 or not self.directory.exists():
            return
        for child in sorted(self.directory.iterdir(), key=lambda p: p.name):
            if ".orbax-checkpoint-tmp" in child.name:
                self._log(
                    f"ignoring partially written checkpoint {child} (an interrupted save); it is never "
                    "used and can be deleted"
                )


# --------------------------------------------------------------------------------------------
# RNG keys: stored as raw key data (uint32) plus the implementation name.
def _rng_to_json(key: jax.Array | None) -> dict | None:
    if key is None:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.device_get(jax.random.key_data(key)))
        return {"typed": True, "impl": str(jax.random.key_impl(key)), "shape": list(data.shape), "data": data.ravel().tolist()}
    data = np.asarray(jax.device_get(key))
    return {"typed": False, "impl": None, "shape": list(data.shape), "data": data.ravel().tolist()}


def _rng_from_json(stored: dict | None, like: Any) -> jax.Array | None:
    if stored is None:
        return None
    data = jnp.asarray(np.asarray(stored["data"], dtype=np.uint32).reshape(stored["shape"]))
    key = jax.random.wrap_key_data(data, impl=stored["impl"]) if stored["typed"] else data
    sharding = getattr(like, "sharding", None)
    return jax.device_put(key, sharding) if sharding is not None else key
