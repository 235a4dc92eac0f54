"""`tailor-jax study STUDY.yaml`: a grid of `tailor-jax run`s, one ordinary run directory per cell.

    base: ../quickstart.yaml          # a run config (path relative to the study file)
    study_dir: runs/studies/gf        # default: runs/studies/<study file name>
    overrides: {grpo.steps: 40}       # optional: dotted keys set in every cell
    grid:                             # the cells: every combination, in this order
      seed: [0, 1, 2]                 # a list: one config key (dotted, as `run key=value` takes it)
      method:                         # a mapping: named variants, each setting several keys
        tailor: {warm_start.method: tailor}
        forward: {warm_start.method: task_trace, warm_start.strategy: forward}
    compare: [[mixed, forward]]       # optional: method pairs the report compares first (then first vs each)
    archive_dir: results/gf/cells     # optional: each finished cell's record (tailor_jax.study_archive)

Every cell's config is validated and planned (run.plan: batches, schedules, problem sets) before
any cell runs; a bad study file stops with one line (exit 2). Cells run in order in child
processes (`--parallel N`: N at a time), each `tailor-jax run STUDY_DIR/CELL/cell.yaml` with its
output in STUDY_DIR/CELL/run.log; finished cells are skipped, an interrupted one resumes from its
checkpoints (run.execute), so a study killed at any point (Ctrl-C, SIGKILL) continues when the
same command is run again. At the end STUDY_DIR/report.md (tailor_jax.eval.study_report).
A grid axis named `seed` is the replicate axis: the report averages over it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tailor_jax.config import apply_overrides, config_from_dict, read_yaml
from tailor_jax.atomic import one_writer, write_json
from tailor_jax.errors import TailorError
from tailor_jax.stage_cache import STAGE_FILE, read_stage
from tailor_jax import study_archive

STUDY_KEYS = ("base", "study_dir", "overrides", "grid", "threshold", "compare", "archive_dir")
REPLICATE_AXIS = "seed"


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    values: dict[str, Any]  # axis -> value (a config value, or a variant's name)
    overrides: dict[str, Any]  # dotted key -> value: the study's `overrides`, then this cell's
    config: dict  # the cell's full run config as plain data (base + overrides + run_dir)

    @property
    def run_dir(self) -> Path:
        return Path(self.config["run_dir"])


@dataclasses.dataclass(frozen=True)
class Study:
    path: Path
    study_dir: Path
    threshold: float  # the report's "steps / seconds to threshold" (held-out accuracy)
    axes: dict[str, list[tuple[Any, dict[str, Any]]]]  # axis -> [(value, {dotted key: value})]
    cells: list[Cell]
    compare: tuple[tuple[str, str], ...] = ()  # method pairs the report compares first (then first vs each)
    archive_dir: Path | None = None  # where finished cells' records are kept (tailor_jax.study_archive)


# ---------------------------------------------------------------------------------------
# Reading a study file.
def _set_keys(data: dict, values: dict[str, Any]) -> dict:
    """`data` with each dotted key set (the `run key=value` overrides, values already parsed)."""
    return apply_overrides(data, [f"{key}={json.dumps(value)}" for key, value in values.items()])


def _label(axis: str, value: Any, variant: bool) -> str:
    text = str(value) if variant or isinstance(value, str) else f"{axis.rsplit('.', 1)[-1]}-{json.dumps(value)}"
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", text).strip("_") or "_"


def _axes(grid: Any, where: str) -> dict[str, list[tuple[Any, dict[str, Any]]]]:
    if not isinstance(grid, dict) or not grid:
        raise TailorError(f"{where}: `grid` must map at least one config key to a list of values, e.g. grid: {{seed: [0, 1, 2]}}")
    axes = {}
    for axis, values in grid.items():
        if isinstance(values, dict):  # named variants
            if not values:
                raise TailorError(f"{where}: grid axis {axis!r} has no variants; give name: {{key: value, ...}} entries")
            for name, keys in values.items():
                if not isinstance(keys, dict) or not keys:
                    raise TailorError(f"{where}: variant {axis}.{name} must map config keys to values, e.g. {{warm_start.method: tailor}}")
            axes[axis] = [(name, dict(keys)) for name, keys in values.items()]
        elif isinstance(values, list):
            if not values:
                raise TailorError(f"{where}: grid axis {axis!r} has no values; give a non-empty list")
            axes[axis] = [(value, {axis: value}) for value in values]
        else:
            raise TailorError(f"{where}: grid axis {axis!r} must be a list of values or a mapping of named variants, got {values!r}")
    return axes


def load_study(path: str | Path) -> Study:
    """The study's cells, each with its full run config; raises TailorError (one line) on a bad file."""
    from itertools import product

    path = Path(path)
    spec = read_yaml(path)
    unknown = sorted(set(spec) - set(STUDY_KEYS))
    if unknown:
        raise TailorError(f"{path}: unknown study key(s) {', '.join(unknown)}; a study file has {', '.join(STUDY_KEYS)}")
    if "base" not in spec:
        raise TailorError(f"{path}: `base` (the run config every cell starts from) is required")
    try:
        base = read_yaml(path.parent / str(spec["base"]))
    except TailorError as err:
        raise TailorError(f"{path}: base (relative to the study file): {err}") from None
    common = spec.get("overrides") or {}
    if not isinstance(common, dict):
        raise TailorError(f"{path}: `overrides` must map dotted config keys to values")
    axes = _axes(spec.get("grid"), str(path))
    for axis, entries in axes.items():
        if any("run_dir" in keys for _, keys in entries) or "run_dir" in common:
            raise TailorError(f"{path}: run_dir is set by the study (STUDY_DIR/CELL); remove it from the grid")
    study_dir = Path(spec.get("study_dir") or Path("runs") / "studies" / path.stem)
    threshold = spec.get("threshold", 0.8)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise TailorError(f"{path}: threshold must be a held-out accuracy in (0, 1], got {threshold!r}")
    cells, seen = [], {}
    for combo in product(*(list(entries) for entries in axes.values())):
        values = {axis: value for axis, (value, _) in zip(axes, combo)}
        name = "_".join(_label(axis, value, isinstance(spec["grid"][axis], dict)) for axis, value in values.items())
        if name in seen:
            raise TailorError(f"{path}: cells {seen[name]} and {values} would share the directory {name}; make the values distinct")
        seen[name] = values
        overrides = dict(common)
        for _, keys in combo:
            overrides.update(keys)
        try:
            config = _set_keys(base, overrides)
        except TailorError as err:
            raise TailorError(f"{path}: cell {name}: {err}") from None
        config["run_dir"] = str(study_dir / name)
        cells.append(Cell(name, values, overrides, config))
    compare = _compare_pairs(spec.get("compare"), cells, str(path))
    archive_dir = spec.get("archive_dir")
    if archive_dir is not None and (not isinstance(archive_dir, str) or not archive_dir.strip()):
        raise TailorError(f"{path}: archive_dir must be a directory path, e.g. archive_dir: results/{path.stem}/cells")
    return Study(path, study_dir, float(threshold), axes, _with_teachers(cells), compare,
                 Path(archive_dir) if archive_dir else None)


def _compare_pairs(compare: Any, cells: list[Cell], where: str) -> tuple[tuple[str, str], ...]:
    """`compare: [[mixed, rule_based], ...]`: method pairs (labels as the report names them: the
    grid values other than `seed`, joined by " / ") the report compares first (then the first method with each)."""
    from tailor_jax.eval.study_report import method_label

    if compare is None:
        return ()
    labels = {method_label(c.values, REPLICATE_AXIS) for c in cells}
    if not isinstance(compare, list) or not all(isinstance(p, list) and len(p) == 2 for p in compare):
        raise TailorError(f"{where}: compare must be a list of method pairs, e.g. compare: [[mixed, rule_based]]")
    for pair in compare:
        unknown = [str(m) for m in pair if str(m) not in labels]
        if unknown:
            raise TailorError(f"{where}: compare: {', '.join(unknown)} is not a method of this grid; "
                              f"its methods are {', '.join(sorted(labels))}")
    return tuple((str(a), str(b)) for a, b in compare)


def _method(cell: Cell) -> str | None:
    return (cell.config.get("warm_start") or {}).get("method")


def _with_teachers(cells: list[Cell]) -> list[Cell]:
    """Each redistill cell may take its teacher from the study's rule_based cells (run.adopt_teacher
    uses the first finished one whose stages hash as the teacher's), so the teacher is not
    trained again when the study already trained the same rule_based run."""
    rule_based = [str(c.run_dir) for c in cells if _method(c) == "rule_based"]
    if not rule_based:
        return cells
    return [dataclasses.replace(c, config={**c.config, "teacher_from": rule_based})
            if _method(c) == "redistill" and "teacher_from" not in c.config else c for c in cells]


def check_cells(study: Study) -> list[str]:
    """Validate and plan every cell (run.plan) before any runs; returns each cell's state:
    `done` (every stage done), `partial` (some stage started) or `new`."""
    return [cell_state(cell, str(study.path)) for cell in study.cells]


def cell_state(cell: Cell, where: str) -> str:
    from tailor_jax import run as run_lib

    try:
        cfg = config_from_dict(run_lib.RunConfig, cell.config)
        stages = run_lib.plan(cfg)
    except TailorError as err:
        raise TailorError(f"{where}: cell {cell.name}: {err}") from None
    work = [s for s in stages if s.status not in ("done", "always")]
    if not work and (not cfg.report or (cell.run_dir / "report.md").is_file()):
        return "done"
    return "partial" if any(s.status != "fresh" for s in stages if s.hash) else "new"


def _archive(study: Study, cell: Cell) -> None:
    teachers = {str(run) for c in study.cells for run in c.config.get("teacher_from") or ()}
    study_archive.archive_cell(cell.run_dir, study.archive_dir, teacher=str(cell.run_dir) in teachers)


def restore_archived(study: Study) -> list[str]:
    """Restore cells that have no run directory from the study's archive (study_archive); the
    names of those restored."""
    if study.archive_dir is None:
        return []
    return [cell.name for cell in study.cells
            if study_archive.restore_cell(cell.run_dir, study.archive_dir, lambda c=cell: cell_state(c, str(study.path)) == "done")]


# ---------------------------------------------------------------------------------------
# Running.
def prepare_child() -> None:
    """In the child, before exec: SIGINT back to its default, so the cell's Python turns it into
    KeyboardInterrupt (and stops at a checkpoint) also when the study was started in the
    background, where the shell makes SIGINT ignored and the ignore would pass to every child;
    and SIGTERM when the study process dies (even by SIGKILL), so no orphaned run keeps writing a
    cell that the next `study` would start again (Linux only)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch_cell(cell: Cell) -> subprocess.Popen:
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    config_path = cell.run_dir / "cell.yaml"
    config_path.write_text(yaml.safe_dump(cell.config, sort_keys=False))
    log = open(cell.run_dir / "run.log", "a")  # noqa: SIM115 (closed with the process)
    log.write(f"--- tailor-jax study: cell {cell.name} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    log.flush()
    # preexec_fn makes Popen fork (not posix_spawn), which trips JAX's at-fork warning; the child
    # only sets a signal disposition, calls prctl and then execs, so no thread state is used.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        proc = subprocess.Popen([sys.executable, "-m", "tailor_jax.cli", "run", str(config_path)], stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=prepare_child if os.name == "posix" else None)
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def cell_outcome(cell: Cell) -> str:
    """Held-out accuracy after SFT and after GRPO, as far as evaluated."""
    parts = []
    for model in ("sft", "grpo"):
        path = cell.run_dir / "eval" / f"{model}.json"
        if path.is_file():
            parts.append(f"{model} {100 * json.loads(path.read_text())['acc']:.1f}%")
    return "held-out acc " + " -> ".join(parts) if parts else "no evaluation"


def recorded_seconds(run_dir: Path) -> float:
    """Compute seconds a run's stages recorded (teacher stages counted inside their stage)."""
    total = 0.0
    for stage_file in run_dir.glob(f"*/{STAGE_FILE}"):
        try:
            total += float((read_stage(stage_file.parent) or {}).get("seconds", 0.0))
        except (TypeError, ValueError):
            pass
    return total


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def eta_text(cell_seconds: Sequence[float], left: int, parallel: int) -> str:
    if not left:
        return "nothing left"
    if not cell_seconds:
        return f"{left} to go, ETA after the first cell"
    seconds = sum(cell_seconds) / len(cell_seconds) * left / parallel
    finish = time.strftime("%H:%M %Z", time.localtime(time.time() + seconds))
    return f"{left} to go, ETA {_duration(seconds)} (~{finish})"


def _say(message: str) -> None:
    print(f"tailor-jax study: {message}", file=sys.stderr, flush=True)


def run_study(study: Study, *, parallel: int = 1, log: Callable[[str], None] = _say) -> list[str]:
    """Run every unfinished cell; returns the names of cells that failed (others are done).
    On Ctrl-C, SIGINT or SIGTERM (`kill`; also for a study started in the background, where the
    shell set SIGINT to be ignored) the running cells get SIGINT (they checkpoint and stop) first."""
    restored = restore_archived(study)
    if restored:
        log(f"restored {len(restored)} finished cell(s) from {study.archive_dir}: {', '.join(restored)}")
    states = check_cells(study)
    study.study_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(study)
    if study.archive_dir is not None:  # finished before the archive was set, or before a kill mid-archive
        for cell, state in zip(study.cells, states):
            if state == "done" and cell.name not in restored:
                _archive(study, cell)
    total = len(study.cells)
    seconds = [recorded_seconds(c.run_dir) for c, s in zip(study.cells, states) if s == "done"]
    pending = []
    for i, (cell, state) in enumerate(zip(study.cells, states), 1):
        if state == "done":
            log(f"[{i}/{total}] {cell.name}: done earlier ({cell_outcome(cell)})")
        else:
            pending.append((i, cell, state))
    log(f"{total - len(pending)} of {total} cells done; {eta_text(seconds, len(pending), parallel)}")
    running: dict[int, tuple[subprocess.Popen, Cell, float]] = {}
    failed: list[str] = []
    previous = _stop_on_signals()
    try:
        while pending or running:
            while pending and len(running) < parallel:
                i, cell, state = pending.pop(0)
                log(f"[{i}/{total}] {cell.name}: {'resuming' if state == 'partial' else 'starting'} (log: {cell.run_dir / 'run.log'})")
                running[i] = (launch_cell(cell), cell, time.perf_counter())
            time.sleep(0.5)
            for i, (proc, cell, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[i]
                proc.log_file.close()
                if rc == 130:
                    raise KeyboardInterrupt
                elapsed = time.perf_counter() - t0
                left = len(pending) + len(running)
                if rc == 0:
                    # a resumed cell's own record holds the time of its earlier parts too
                    seconds.append(max(elapsed, recorded_seconds(cell.run_dir)))
                    if study.archive_dir is not None:
                        _archive(study, cell)
                    log(f"[{i}/{total}] {cell.name}: done in {_duration(elapsed)} ({cell_outcome(cell)}); "
                        f"{eta_text(seconds, left, parallel)}")
                else:
                    failed.append(cell.name)
                    log(f"[{i}/{total}] {cell.name}: FAILED (exit {rc}): {_last_line(cell.run_dir / 'run.log')}; "
                        f"see {cell.run_dir / 'run.log'}; {eta_text(seconds, left, parallel)}")
    except KeyboardInterrupt:
        for proc, _, _ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # the trainers save a checkpoint and stop
        for proc, _, _ in running.values():
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
        log("interrupted; run the same command again to continue (finished cells are kept, the others resume)")
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return failed


def _stop_on_signals() -> dict:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt (so the cells are stopped at a checkpoint,
    not left to the parent-death signal, and not ignored); returns the previous handlers (none
    off the main thread, where handlers cannot be set)."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, stop)
        except ValueError:  # not the main thread
            break
    return previous


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    if not lines:
        return "(no output)"
    last = lines[-1].strip()
    return last if len(last) <= 500 else last[:500] + " [...]"


def cell_stage_hashes(cell: Cell) -> dict[str, list[str]]:
    """Per stage, the hashes a stage directory may hold and still be this cell's (today's and
    the legacy ones): the report counts only stages finished under them."""
    from tailor_jax import run as run_lib

    cfg = config_from_dict(run_lib.RunConfig, cell.config)
    return {stage: sorted(hashes) for stage, hashes in run_lib.accepted_hashes(cfg, run_lib.stage_hashes(cfg)).items()}


def write_manifest(study: Study) -> Path:
    """STUDY_DIR/study.json: the axes and cells (what the study report groups by), and each
    cell's stage hashes (which of its results belong to its current config)."""
    manifest = {
        "study_file": str(study.path),
        "axes": {axis: [value for value, _ in entries] for axis, entries in study.axes.items()},
        "replicate_axis": REPLICATE_AXIS if REPLICATE_AXIS in study.axes else None,
        "threshold": study.threshold,
        "compare": [list(pair) for pair in study.compare],
        "cells": [{"name": c.name, "values": c.values, "overrides": c.overrides, "stage_hashes": cell_stage_hashes(c)}
                  for c in study.cells],
    }
    path = study.study_dir / "study.json"
    write_json(path, manifest)
    return path


# ---------------------------------------------------------------------------------------
# CLI.
def register(subparsers) -> None:
    parser = subparsers.add_parser("study", help="a grid of runs (methods x seeds ...), resumable, with a study report")
    parser.add_argument("study_file", help="YAML study file (see configs/studies/ and docs/study.md)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="run N cells at a time (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="validate every cell and print the cells' states, run nothing")
    parser.set_defaults(func=run)


def run(args) -> int:
    from tailor_jax.parallel.cpu import configure_cpu_devices

    if args.parallel < 1:
        raise TailorError(f"--parallel must be >= 1, got {args.parallel}")
    configure_cpu_devices()  # the cells' batch checks see the devices a `run` child will have
    study = load_study(args.study_file)
    if args.dry_run:
        states = check_cells(study)
        print(f"study {study.path}: {len(study.cells)} cells in {study.study_dir}")
        index_width = len(f"[{len(study.cells)}/{len(study.cells)}]")  # columns line up past cell 9
        for i, (cell, state) in enumerate(zip(study.cells, states), 1):
            if study.archive_dir is not None and study_archive.restorable(cell.run_dir, study.archive_dir):
                state = "archived"  # restored when the study runs, if its record is of this config
            index = f"[{i}/{len(study.cells)}]"
            print(f"  {index:<{index_width}} {cell.name:<40} {state:<8} " + " ".join(f"{k}={json.dumps(v)}" for k, v in cell.values.items()))
        return 0
    check_cells(study)  # every cell valid before anything is written (run_study checks again, under the lock)
    with one_writer(study.study_dir, "tailor-jax study"):
        failed = run_study(study, parallel=args.parallel)
    from tailor_jax.eval import study_report

    path = study_report.write_study_report(study.study_dir)
    _say(f"report: {path}")
    if failed:
        _say(f"{len(failed)} cell(s) failed: {', '.join(failed)}; fix and run the same command again")
        return 1
    return 0
