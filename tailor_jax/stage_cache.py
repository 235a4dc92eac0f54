"""The stage cache: which stages of a run (or of the Tailor pipeline) are done, and with what.

A stage's directory holds `stage.json` = {"hash": <hash of everything the stage's output
depends on>, "status": "running" | "done", ...more (summary, seconds)}. A stage is then

- `done`: status done with a wanted hash (skip it, use its output),
- `resume`: the same hash but not done (it was interrupted: the trainers restore their latest
  checkpoint),
- `fresh`: no marker, an unreadable one, or another hash (start afresh).

Both `tailor-jax run` (`tailor_jax.run`) and the Tailor pipeline (`tailor.pipeline`) keep
their stages here. Pipeline directories written before 2026-12-06 hold `done.json` =
{"settings_hash": h} instead, written only once a stage finished; `read_stage` reads it as
{"hash": h, "status": "done"}, so those directories are still recognised as done. The next
time such a stage is written it gets a `stage.json`, which wins over the old file.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from tailor_jax.atomic import write_json

STAGE_FILE = "stage.json"
LEGACY_DONE_FILE = "done.json"  # the Tailor pipeline's marker before 2026-12-06

StageStatus = Literal["done", "resume", "fresh"]


def _read_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn or foreign file: treat as never started
    return data if isinstance(data, dict) else None


def read_stage(directory: str | Path) -> dict | None:
    """The stage's marker, or None when it has none (or only an unreadable one)."""
    directory = Path(directory)
    if (directory / STAGE_FILE).is_file():
        return _read_object(directory / STAGE_FILE)
    legacy = _read_object(directory / LEGACY_DONE_FILE) if (directory / LEGACY_DONE_FILE).is_file() else None
    if legacy is not None and isinstance(legacy.get("settings_hash"), str):
        return {"hash": legacy["settings_hash"], "status": "done"}
    return None


def write_stage(directory: str | Path, info: dict) -> None:
    """Write the stage's marker atomically (`info` holds at least "hash" and "status")."""
    write_json(Path(directory) / STAGE_FILE, info)


def stage_status(directory: str | Path, wanted_hashes: Collection[str]) -> StageStatus:
    info = read_stage(directory)
    if info is None or info.get("hash") not in wanted_hashes:
        return "fresh"
    return "done" if info.get("status") == "done" else "resume"
