"""The plan (which stages are done, resumed or run afresh), the driver that runs them, and the
`tailor-jax run` command."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Literal

import jax
import yaml

from tailor_jax.atomic import LOCK_NAME, one_writer, replace_dir
from tailor_jax.config import config_to_dict, dump_config
from tailor_jax.errors import TailorError
from tailor_jax.run import checks
from tailor_jax.run.config import TEACHER_STAGES, RunConfig, grpo_config, load_run_config, run_stages, sft_config, stage_dir, teacher_config
from tailor_jax.run.hashes import accepted_hashes, stage_hashes
from tailor_jax.run.stages import Interrupted, run_data, run_eval, run_grpo, run_report, run_sft, run_warm_start
from tailor_jax.stage_cache import read_stage, stage_status, write_stage


def run_teacher(cfg: RunConfig, out: Path) -> str:
    """redistill's teacher run (data -> rule_based warm start -> SFT -> GRPO), resumable like any
    run, or taken from a finished run of the same config (`teacher_from`)."""
    teacher = teacher_config(cfg)
    source = adopt_teacher(teacher, cfg.teacher_from, out)
    if source is not None:
        _say(f"teacher: took the trained teacher from {source} (its data, warm_start, sft and grpo stages hash as "
             "this teacher's), linked instead of trained again")
    summaries = execute(teacher, only=TEACHER_STAGES, log=lambda message: _say(f"teacher: {message}"))
    return f"rule_based teacher: {summaries['grpo']}"


def adopt_teacher(teacher: RunConfig, sources: Collection[str], out: Path) -> Path | None:
    """Fill OUT (the teacher's run directory) with the stages of the first finished run in
    `sources` whose data, warm_start, sft and grpo stages are done under the teacher's hashes:
    the policy the teacher would train from the same config (bitwise so where both run on the same
    devices and versions: the trainers are deterministic). Files are hard-linked
    (copied across file systems); done stages are never written again. Returns the source, or
    None (OUT already holds a finished teacher, or no source matches)."""
    accepted = accepted_hashes(teacher, stage_hashes(teacher))
    finished = lambda run: all(stage_status(Path(run) / s, accepted[s]) == "done" for s in TEACHER_STAGES)  # noqa: E731
    if finished(out):
        return None
    source = next((Path(run) for run in sources if finished(run) and (Path(run) / "grpo" / "model").is_dir()), None)
    if source is None:
        return None
    for stage in TEACHER_STAGES:  # each stage swapped in whole: a kill between two leaves OUT to adopt again
        replace_dir(out / stage, lambda tmp, stage=stage: shutil.copytree(
            source / stage, tmp, copy_function=_link_or_copy,
            ignore=shutil.ignore_patterns(LOCK_NAME)))  # a lock file's inode is the source's own
    return source


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


STAGE_FUNCTIONS: dict[str, Callable[[RunConfig, Path], str]] = {
    "data": run_data, "teacher": run_teacher, "warm_start": run_warm_start, "sft": run_sft, "grpo": run_grpo,
    "eval": run_eval, "report": run_report,
}


# ---------------------------------------------------------------------------------------
# The plan and the driver.
@dataclasses.dataclass(frozen=True)
class PlannedStage:
    name: str
    hash: str | None  # None: always runs (report)
    status: Literal["done", "resume", "fresh", "always"]


def plan(cfg: RunConfig) -> list[PlannedStage]:
    checks.check_batches(cfg)
    checks.check_schedules(cfg)
    checks.check_input_paths(cfg)
    checks.check_problem_sets(cfg)
    checks.check_pool_sizes(cfg)
    checks.check_context_lengths(cfg)
    hashes = stage_hashes(cfg)
    accepted = accepted_hashes(cfg, hashes)
    stages = []
    for name in run_stages(cfg):
        if name == "grpo" and cfg.grpo is None or name == "report" and not cfg.report:
            continue
        if name == "report":
            stages.append(PlannedStage(name, None, "always"))
        else:
            stages.append(PlannedStage(name, hashes[name], stage_status(stage_dir(cfg, name), accepted[name])))
    return stages


_PLAN_WORDS = {"done": "skip (done)", "resume": "resume", "fresh": "run", "always": "run"}


def format_plan(cfg: RunConfig, stages: list[PlannedStage]) -> str:
    lines = [f"plan for {cfg.run_dir}:"]
    for i, stage in enumerate(stages, 1):
        tag = f"hash {stage.hash}" if stage.hash else ""
        lines.append(f"  [{i}/{len(stages)}] {stage.name:<10} {_PLAN_WORDS[stage.status]:<12} {tag}")
    return "\n".join(lines)


def format_resolved(cfg: RunConfig) -> str:
    """The run config and the trainer configs it resolves to (every default filled in), as YAML."""
    resolved = {"run": config_to_dict(cfg), "sft (resolved)": config_to_dict(sft_config(cfg))}
    if cfg.grpo is not None:
        resolved["grpo (resolved)"] = config_to_dict(grpo_config(cfg))
    return yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False)


def _say(message: str) -> None:
    print(f"tailor-jax run: {message}", file=sys.stderr, flush=True)


def execute(cfg: RunConfig, *, log: Callable[[str], None] = _say, only: Collection[str] | None = None) -> dict[str, str]:
    """Run every stage (of `only`, when given) that is not already done; returns {stage: summary}."""
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TailorError(f"run_dir {run_dir} is a file; give a directory")
    stages = [s for s in plan(cfg) if only is None or s.name in only]  # plan validates the whole config first
    from tailor_jax.train.memory_plan import device_limit_gib

    if device_limit_gib(cfg.device_memory_gib or sft_config(cfg).memory.device_memory_gib)[0] is not None:
        checks.memory_plan(cfg, log)  # a known device: stop before any stage if one cannot fit
    run_dir.mkdir(parents=True, exist_ok=True)
    with one_writer(run_dir, "tailor-jax run") if jax.process_index() == 0 else contextlib.nullcontext():
        return _execute_stages(cfg, stages, log)


def _execute_stages(cfg: RunConfig, stages: list[PlannedStage], log: Callable[[str], None]) -> dict[str, str]:
    run_dir = Path(cfg.run_dir)
    dump_config(cfg, run_dir / "config.yaml")
    summaries: dict[str, str] = {}
    start_all = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        directory = stage_dir(cfg, stage.name)
        prefix = f"[{i}/{len(stages)}] {stage.name}"
        if stage.status == "done":
            summaries[stage.name] = read_stage(directory).get("summary", "")
            log(f"{prefix}: skipped (done, hash {stage.hash}): {summaries[stage.name]}")
            continue
        if stage.status == "fresh" and directory.exists():
            old = (read_stage(directory) or {}).get("hash")
            shutil.rmtree(directory)  # another config's (or a torn) output
            if old is not None:  # say what was thrown away: it may have been hours of training
                log(f"{prefix}: its config or an earlier stage changed (hash {old} -> {stage.hash}); "
                    f"cleared {directory} to run it again")
        if stage.name != "report":
            previous = read_stage(directory) or {}
            write_stage(directory, {"hash": stage.hash, "status": "running", "seconds": previous.get("seconds", 0.0)})
        log(f"{prefix}: {'resuming' if stage.status == 'resume' else 'running'}")
        t0 = time.perf_counter()
        try:
            summary = STAGE_FUNCTIONS[stage.name](cfg, directory)
        except BaseException as stop:
            if stage.name != "report":  # the time spent counts when the stage resumes (a SIGKILL's is lost)
                spent = (read_stage(directory) or {}).get("seconds", 0.0) + time.perf_counter() - t0
                write_stage(directory, {"hash": stage.hash, "status": "running", "seconds": spent})
            if isinstance(stop, Interrupted):
                log(f"{prefix}: {stop}; checkpoint saved, rerun the same command to continue")
                raise KeyboardInterrupt from None
            raise
        seconds = time.perf_counter() - t0
        if stage.name != "report":
            total = (read_stage(directory) or {}).get("seconds", 0.0) + seconds
            write_stage(directory, {"hash": stage.hash, "status": "done", "summary": summary, "seconds": total})
        summaries[stage.name] = summary
        log(f"{prefix}: done in {seconds:.1f}s: {summary}")
    log(f"finished in {time.perf_counter() - start_all:.1f}s" + (f"; report: {run_dir / 'report.md'}" if cfg.report else ""))
    return summaries


# ---------------------------------------------------------------------------------------
# CLI.
def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the whole pipeline: data, warm start, SFT, GRPO, eval, report")
    parser.add_argument("config", help="YAML run config (see configs/ and docs/run.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. grpo.steps=10")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, run nothing")
    parser.set_defaults(func=run)


def run(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    if args.dry_run:
        print(format_resolved(cfg), end="")
        print(format_plan(cfg, plan(cfg)))
        checks.memory_plan(cfg, lambda line: print(line, file=sys.stderr))  # stdout stays the YAML and the plan
        return 0
    execute(cfg)
    return 0
