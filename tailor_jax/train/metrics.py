"""Metrics: JSON lines, TensorBoard scalars (tensorboardX) and, optionally, Weights & Biases; and
a progress bar.

`<run_dir>/metrics.jsonl` gets one line per `write`: {"step": int, "time": unix seconds,
name: value, ...}; non-finite values are written as null (TensorBoard and W&B get the raw value).
`<run_dir>/tensorboard/events.out.tfevents.*` holds the same scalars under the same names
(tensorboardX's writer: no TensorFlow needed). With a `wandb:` config section the same scalars at
the same steps go to a W&B run too (the `wandb` package is an optional extra, imported only then;
`mode: offline` writes under `<run_dir>/wandb/` for a later `wandb sync`). The W&B run id is kept
in `<run_dir>/wandb_id.txt`, so a resumed training run continues the same W&B run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from tailor_jax.config import require
from tailor_jax.errors import TailorError


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """The `wandb:` section of the SFT / GRPO configs."""

    project: str
    name: str | None = None  # the W&B run name (default: W&B's own)
    mode: Literal["online", "offline", "disabled"] = "online"
    entity: str | None = None  # team or user (default: the logged-in user's)
    tags: tuple[str, ...] = ()

    def __post_init__(self):
        require(bool(self.project.strip()), "wandb.project must be a non-empty name")


def _to_float(name: str, value: Any) -> float:
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} must be a scalar number, got {type(value).__name__}") from None


def _start_wandb(run_dir: Path, cfg: WandbConfig, config: Mapping[str, Any] | None):
    try:
        import wandb
    except ImportError:
        raise TailorError("the config has a wandb section but the wandb package is not installed; "
                          "pip install 'tailor-jax[wandb]' or remove the wandb section") from None
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
    id_file.write_text(run_id + "\n")
    return wandb.init(project=cfg.project, name=cfg.name, mode=cfg.mode, entity=cfg.entity, tags=list(cfg.tags),
                      id=run_id, resume="allow", dir=str(run_dir), config=dict(config or {}))


class MetricsWriter:
    """Append scalars to metrics.jsonl, a TensorBoard event file and (with `wandb`) a W&B run;
    a no-op unless `is_primary`. `config` (a plain dict) is stored with the W&B run."""

    def __init__(self, run_dir: str | os.PathLike, *, is_primary: bool = True, tensorboard: bool = True,
                 wandb: WandbConfig | None = None, config: Mapping[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.is_primary = is_primary
        self._jsonl = self._tensorboard = self._wandb = None
        if not is_primary:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if wandb is not None:  # first: a missing package fails before any file is opened
            self._wandb = _start_wandb(self.run_dir, wandb, config)
        path = self.run_dir / "metrics.jsonl"
        _drop_unfinished_record(path)
        self._jsonl = open(path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(logdir=str(self.run_dir / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record scalar `metrics` (numbers or 0-d arrays) at `step`."""
        if not self.is_primary or not metrics:
            return
        now = time.time()
        values = {name: _to_float(name, value) for name, value in metrics.items()}
        record = {"step": int(step), "time": round(now, 3)}
        record.update({name: value if math.isfinite(value) else None for name, value in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, global_step=int(step), walltime=now)
            self._tensorboard.flush()  # on disk now: a preempted run keeps what it logged
        if self._wandb is not None:
            self._wandb.log(values, step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl = self._tensorboard = self._wandb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _drop_unfinished_record(path: Path) -> None:
    """Cut a last line without its newline: a record whose write was interrupted (a kill, a power
    cut). Appending after it would join the next record onto it and make both unreadable. Its
    step is after the checkpoint the run resumes from, so it is logged again."""
    if not path.is_file():
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return  # the usual case: one byte read, not the whole file
        handle.seek(0)
        handle.truncate(handle.read().rfind(b"\n") + 1)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file; for steps logged twice (after a resume) the last wins.

    A last line without its newline (a write cut short; the writer drops it when the run resumes)
    is ignored; any other unreadable line raises TailorError naming the file and line.
    """
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # no newline after it: the write did not finish
                continue
            raise TailorError(f"{path}, line {number}: not a metrics record ({line[:80]!r}); "
                              "delete that line or restore the file from a copy") from None
        by_step.setdefault(step, {}).update(record)
    return [by_step[step] for step in sorted(by_step)]


# --------------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar over training steps showing loss, tokens/s and the ETA (hidden unless primary)."""

    def __init__(self, total_steps: int, *, initial_step: int = 0, desc: str = "train", enabled: bool = True):
        self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, unit="step",
                         disable=not enabled, dynamic_ncols=True)
        self._last_time = time.perf_counter()

    def update(self, step: int, *, loss: float | None = None, tokens: int | None = None, **extra: float) -> None:
        """Advance the bar to `step`; `tokens` processed since the previous update give tokens/s."""
        now = time.perf_counter()
        elapsed, self._last_time = now - self._last_time, now
        postfix = {}
        if loss is not None:
            postfix["loss"] = f"{float(loss):.4f}"
        if tokens is not None and elapsed > 0:
            postfix["tok/s"] = f"{tokens / elapsed:,.0f}"
        postfix.update({k: f"{float(v):.4g}" for k, v in extra.items()})
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
