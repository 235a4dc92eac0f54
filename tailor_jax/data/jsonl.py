"""Atomic JSON-lines writing and validated reading."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tailor_jax.atomic import open_for_write
from tailor_jax.errors import TailorError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with a fix hint, if `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise TailorError(f"output path {path} is a directory; give a file name such as {path}/data.jsonl")
    if not parent.is_dir():
        raise TailorError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TailorError(f"cannot write {path}: permission denied; choose another --out")
    return path


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records one per line; the file appears only once complete (temp file + rename),
    so an interrupted write never clobbers an existing file. Returns the count written."""
    path = check_writable(path)
    count = 0
    with open_for_write(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield records; a malformed line raises TailorError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TailorError(f"data file {path} not found; generate it with `tailor-jax generate`")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise TailorError(f"{path}:{lineno}: not valid JSON ({err.msg}); fix or regenerate the file") from None
            if not isinstance(record, dict):
                raise TailorError(f"{path}:{lineno}: expected a JSON object per line")
            yield record
