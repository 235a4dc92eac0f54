"""Checkpoint manifests: every file of a finalized step with its size and CRC-32.

`write_manifest(step_dir)` seals a step Orbax has committed; `check_manifest(step_dir)` says
whether the files still match (None) or what is wrong (one short phrase). Sizes catch deleted
or truncated files at the cost of a directory listing; checksums catch bytes changed in place
(a bad disk, a torn copy, a stray write), which leave sizes alone and which Orbax/TensorStore
would otherwise restore without a word.

Cost: zlib's CRC-32 runs at about 1.7 GB/s per core here and releases the GIL, so files are
checksummed on a few threads at once. The files were just written, so at save time they are
read back from the page cache; with asynchronous saves this runs in Orbax's finalize thread,
not in the training loop. benchmarks/checkpoint_io.py measures it (docs/training.md has numbers).

Manifests written before checksums existed (format 1: sizes only) are still accepted and
checked by size.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

from etils import epath

from tailor_jax.atomic import write_json

MANIFEST_NAME = "tailor_manifest.json"
MANIFEST_FORMAT = 2  # 1: {"files": {name: size}}; 2: {"files": {name: {"size": n, "crc32": c}}}
# check_manifest's verdict on a step Orbax committed but the seal never reached: the process died
# between the two (a SIGKILL during the save), not damage to a finished checkpoint.
UNSEALED = f"no {MANIFEST_NAME} (the save did not finish)"
_CHUNK_BYTES = 8 << 20
_THREADS = max(1, min(8, os.cpu_count() or 1))


def list_files(root: epath.Path) -> dict[str, int]:
    """Relative path -> size of every file under `root` (the manifest itself excluded)."""
    files: dict[str, int] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        for child in directory.iterdir():
            if child.is_dir():
                pending.append(child)
            elif child.name != MANIFEST_NAME:
                files[str(child.relative_to(root))] = int(child.stat().length)
    return files


def file_crc32(path: epath.Path) -> int:
    """CRC-32 of a file, read in chunks."""
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def _checksums(root: epath.Path, names: list[str]) -> dict[str, int]:
    """CRC-32 of each named file, on several threads (callers pass the largest first, so that
    one big file does not start last)."""
    if len(names) <= 1 or _THREADS == 1:
        return {name: file_crc32(root / name) for name in names}
    with ThreadPoolExecutor(_THREADS) as pool:
        return dict(zip(names, pool.map(lambda name: file_crc32(root / name), names)))


def write_manifest(step_dir: epath.Path) -> None:
    """Seal a finalized step directory: the size and CRC-32 of every file in it (atomic write)."""
    sizes = list_files(step_dir)
    names = sorted(sizes, key=lambda name: -sizes[name])
    crcs = _checksums(step_dir, names)
    files = {name: {"size": sizes[name], "crc32": crcs[name]} for name in sorted(sizes)}
    write_json(step_dir / MANIFEST_NAME, {"format": MANIFEST_FORMAT, "files": files}, indent=0)


def check_manifest(step_dir: epath.Path) -> str | None:
    """None if every file of the step matches its manifest, else a short description of the problem."""
    path = step_dir / MANIFEST_NAME
    if not path.exists():
        return UNSEALED
    try:
        expected = json.loads(path.read_text())["files"]
        expected = {name: entry if isinstance(entry, dict) else {"size": int(entry)} for name, entry in expected.items()}
        sizes = {name: int(entry["size"]) for name, entry in expected.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_NAME} is unreadable"
    actual = list_files(step_dir)
    for name, size in sizes.items():
        if name not in actual:
            return f"file {name} is missing"
        if actual[name] != size:
            return f"file {name} has {actual[name]} bytes, expected {size}"
    with_crc = sorted((name for name, entry in expected.items() if "crc32" in entry), key=lambda name: -sizes[name])
    crcs = _checksums(step_dir, with_crc)
    for name in sorted(with_crc):
        if crcs[name] != int(expected[name]["crc32"]):
            return f"file {name} does not match its checksum (changed after it was written)"
    return None
