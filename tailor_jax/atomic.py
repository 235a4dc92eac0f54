"""Atomic writes: a file or directory appears complete or not at all.

Each write goes to a temporary sibling (same directory, so the same file system) that is
renamed over the target once complete, so an interrupted write (SIGKILL, a full disk, an
exception) never leaves a torn file and never clobbers the previous version. The one copy of
this pattern in the package: JSON-lines, JSON, YAML and Markdown outputs, stage markers,
checkpoint manifests and exported model directories all go through it.

`one_writer(directory, command)` is the other half: one process at a time writes a run, stage or
study directory, so two copies of a command (a relaunch while the first still runs) cannot
interleave their checkpoints and metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tailor_jax.errors import TailorError


@contextlib.contextmanager
def open_for_write(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A text file (UTF-8) to write `path` through; it replaces `path` when the block exits
    normally, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    """Write `text` to `path` atomically. `path` may be a local path or an `etils.epath.Path`
    (a checkpoint directory on GCS: there the rename is a copy, still never a torn file)."""
    if isinstance(path, (str, Path)):
        with open_for_write(path) as f:
            f.write(text)
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # an epath.Path: no mkstemp there
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def write_json(path, data: Any, *, indent: int | None = 2, **dumps_options) -> None:
    """`data` as JSON (and a final newline) to `path`, atomically."""
    write_text(path, json.dumps(data, indent=indent, **dumps_options) + "\n")


def replace_dir(final: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Build a directory through `write(tmp)`, then swap it in for `final` (a reader never sees
    half of it; a leftover from an interrupted build is cleared first)."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


LOCK_NAME = ".lock"


@contextlib.contextmanager
def one_writer(directory: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (created if missing) while the block runs; TailorError
    (one line) when another process holds it. The OS drops the lock when its holder exits, however
    it ends (a SIGKILL included), so a stale lock never blocks a rerun."""
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TailorError(
                f"another process is writing {directory} (`{command}` started twice?); wait for it or stop it "
                "first, or give this one another directory"
            ) from None
        yield
