"""A study's archive: each finished cell's record, kept apart from its weights, checkpoints and data.

    archive_dir: benchmarks/results/studies/kk-warm-starts/cells    # in the study file

A long study outlives the machine it started on only if its results do. The run directories
hold checkpoints and demonstrations (tens of MB a cell for the tiny models here, gigabytes for
real ones), but the reports read a few hundred kilobytes:
the configs, the stage markers (with their hashes and summaries), the training metrics, the
evaluations and the logs (`RECORD_GLOBS`). With `archive_dir` set, the study copies that record
of each finished cell to ARCHIVE_DIR/CELL (small enough to commit), and when it starts, a cell
with no run directory but a record in the archive is restored from it: its stages read as done
under their hashes, so the study skips it and its report counts it. A record written under
another config (its stage hashes are not the cell's any more) is not restored; that cell runs
afresh. A restored cell has no models, with one exception: a cell that redistill cells take as
their teacher (`teacher_from`) also keeps its final policy (`grpo/model`, 3.5 MB for the KK and
iGSM studies' model), the one thing run.adopt_teacher needs from it; without it each such
redistill cell would train that teacher again (an hour on a 2-core CPU).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

# What the run and study reports read (tailor_jax.eval.report, study_report), plus logs and configs.
RECORD_GLOBS = (
    "cell.yaml", "config.yaml", "report.md", "run.log",
    "*/stage.json", "*/metrics.jsonl", "warm_start/stats.json", "eval/*.json",
    "teacher/*/stage.json", "teacher/*/metrics.jsonl", "teacher/warm_start/stats.json",
)
TEACHER_GLOBS = ("grpo/model/*",)  # what a redistill cell samples from (run.adopt_teacher)


def record_files(run_dir: Path, teacher: bool = False) -> list[Path]:
    """The cell's record: its files matching RECORD_GLOBS (and TEACHER_GLOBS for a cell that is a
    redistill cell's teacher), relative to `run_dir`."""
    patterns = RECORD_GLOBS + (TEACHER_GLOBS if teacher else ())
    found = {path.relative_to(run_dir) for pattern in patterns for path in run_dir.glob(pattern) if path.is_file()}
    return sorted(found)


def archive_cell(run_dir: Path, archive_dir: Path, teacher: bool = False) -> Path:
    """Copy the cell's record to ARCHIVE_DIR/<cell name>, replacing an earlier one whole: it is
    written beside it first, so a kill mid-copy leaves the earlier record (or none) and the run
    directory, which the next `study` archives again."""
    target = archive_dir / run_dir.name
    staging = archive_dir / f".{run_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for relative in record_files(run_dir, teacher):
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / relative, staging / relative)
    staging.mkdir(parents=True, exist_ok=True)  # a record with no files still marks the cell as archived
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def restorable(run_dir: Path, archive_dir: Path) -> bool:
    """The cell has no run directory and a record in the archive."""
    return not run_dir.exists() and (archive_dir / run_dir.name).is_dir()


def restore_cell(run_dir: Path, archive_dir: Path, is_done: Callable[[], bool]) -> bool:
    """Restore the cell's run directory from its archived record when it has none; keep it only if
    `is_done()` then holds (every stage done under the cell's current hashes). Returns whether
    the cell was restored."""
    if not restorable(run_dir, archive_dir):
        return False
    record = archive_dir / run_dir.name
    staging = run_dir.parent / f".{run_dir.name}.restoring"  # renamed in whole: no half-restored cell
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(record, staging)
    staging.rename(run_dir)
    if is_done():
        return True
    shutil.rmtree(run_dir)  # a record of another config: the cell runs afresh
    return False
