"""`tailor-jax run`: stage hashes, skip / resume / re-run logic (with fake stages, in process),
the warm-start data, and a real micro pipeline interrupted by SIGKILL and SIGINT, then resumed."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tailor_jax import run as run_lib
from tailor_jax.run import checks as run_checks
from tailor_jax.run import driver as run_driver
from tailor_jax.data.jsonl import read_jsonl, write_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.tasks import get_task
from tailor_jax.tasks.gf import check_trace
from tailor_jax.train import grpo as grpo_lib

# A micro pipeline: tiny model, a few steps per stage, checkpoints every step or two.
MICRO = {
    "task": "gf",
    "task_options": {"p": 11},
    "mesh_preset": "single-device",
    "data": {"num_train": 64, "num_sft_eval": 8, "train_options": {"steps": "2-3"}},
    "warm_start": {"method": "task_trace", "strategy": "mixed"},
    "sft": {
        "steps": 40, "batch_size": 2, "log_every": 1, "eval_batches": 1, "progress": False,
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
                                                  "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}},
        "optimizer": {"lr": 1.0e-3},
        "checkpoint": {"every_steps": 5, "keep": 1, "async_save": False},
        "data": {"seq_len": 256},
    },
    "grpo": {
        "task_options": {"steps": 3}, "steps": 12, "log_every": 1, "progress": False,
        "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 16},
        "optimizer": {"lr": 1.0e-4},
        "checkpoint": {"every_steps": 1, "keep": 1, "async_save": False},
    },
    "eval": {"levels": [3], "per_level": 4, "max_new_tokens": 16},
}


def micro_config(run_dir: Path, **changes) -> run_lib.RunConfig:
    from tailor_jax.config import config_from_dict

    return config_from_dict(run_lib.RunConfig, {**MICRO, "run_dir": str(run_dir), **changes})


# ---------------------------------------------------------------------------------------
# Hashes and the plan.
def test_hashes_change_only_downstream(tmp_path):
    base = run_lib.stage_hashes(micro_config(tmp_path))
    more_rl = run_lib.stage_hashes(micro_config(tmp_path, grpo={**MICRO["grpo"], "steps": 13}))
    assert [base[s] == more_rl[s] for s in ("data", "warm_start", "sft", "grpo", "eval")] == [True, True, True, False, False]
    other_data = run_lib.stage_hashes(micro_config(tmp_path, data={**MICRO["data"], "num_train": 65}))
    assert all(base[s] != other_data[s] for s in base)
    moved = run_lib.stage_hashes(micro_config(tmp_path / "elsewhere"))
    assert moved == base  # paths are not part of the hashes
    for mesh in ({"mesh_preset": "auto"}, {"mesh": {"data": 1, "fsdp": 2, "tensor": 1}}):
        assert run_lib.stage_hashes(micro_config(tmp_path, **mesh)) == base  # nor is the mesh


def test_new_options_left_off_keep_the_hashes(tmp_path):
    """An option added later enters the hash only when used, so existing run directories still
    match: the quickstart's hashes are those its run directories hold since 2026-12-05."""
    cfg = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}"])
    hashes = run_lib.stage_hashes(cfg)
    assert (hashes["sft"], hashes["eval"]) == ("0788017e62e801f3", "2e43d30949633924")
    off = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", "sft.position_gaps={prob: 0, max_gap: 5}"])
    assert run_lib.stage_hashes(off) == hashes
    logged = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", "sft.wandb={project: p}",
                                                                 "grpo.wandb={project: p, mode: offline}"])
    assert run_lib.stage_hashes(logged) == hashes  # where metrics go is not what a stage computes
    on = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", "sft.position_gaps.prob=0.3"])
    changed = run_lib.stage_hashes(on)
    assert [changed[s] == hashes[s] for s in ("data", "warm_start", "sft", "grpo")] == [True, True, False, False]


def test_grpo_model_options_enter_the_hash_only_when_set(tmp_path):
    """grpo.model (remat / attention of the policy, added 2026-12-06): left empty, the GRPO hash
    is the one older run directories hold; set, only the GRPO stage's hash changes; a shape
    option or a bad value is one clear line."""
    cfg = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}"])
    hashes = run_lib.stage_hashes(cfg)
    assert hashes["grpo"] == "b28e1bd3357a6afd"  # as at 945197d, before grpo.model existed
    empty = run_lib.stage_hashes(run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", "grpo.model={}"]))
    assert empty == hashes
    remat = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", "grpo.model={remat: full}"])
    assert run_lib.grpo_config(remat).model == {"remat": "full"}
    changed = run_lib.stage_hashes(remat)
    assert [changed[s] == hashes[s] for s in ("data", "warm_start", "sft", "grpo")] == [True, True, True, False]
    for bad, says in (("{hidden_size: 64}", "hidden_size cannot be set here"), ("{remat: sometimes}", "remat must be one of")):
        with pytest.raises(TailorError, match=says):
            run_lib.grpo_config(run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", f"grpo.model={bad}"]))


def test_run_directories_hashed_with_their_mesh_still_match(tmp_path, fake_stages, monkeypatch):
    """Before 2026-12-05 the hashes included the mesh (`auto` then meant fsdp over every device);
    such a directory must resume and skip as before, not be cleared as another config's."""
    calls, _ = fake_stages
    monkeypatch.setattr(run_checks, "check_batches", lambda cfg: None)  # MICRO's 2 rows vs 8 devices
    cfg = micro_config(tmp_path, mesh_preset="auto")
    old = run_lib.stage_hashes(cfg, legacy_mesh={"data": 1, "fsdp": -1, "tensor": 1})
    assert old["sft"] != run_lib.stage_hashes(cfg)["sft"]
    for stage, status in (("data", "done"), ("warm_start", "done"), ("sft", "running")):
        run_lib.write_stage(tmp_path / stage, {"hash": old[stage], "status": status})
    (tmp_path / "sft" / "partial").write_text("x")
    assert [s.status for s in run_lib.plan(cfg)] == ["done", "done", "resume", "fresh", "fresh", "always"]
    run_lib.execute(cfg, log=lambda message: None)
    assert calls[0] == ("sft", "kept")
    assert run_lib.read_stage(tmp_path / "sft")["hash"] == run_lib.stage_hashes(cfg)["sft"]


# ---------------------------------------------------------------------------------------
# The driver with fake stages: skip done stages, resume interrupted ones, redo changed ones.
@pytest.fixture
def fake_stages(monkeypatch):
    calls: list[tuple[str, str]] = []
    interrupt_at: set[str] = set()

    def make(name):
        def stage(cfg, out):
            status = json.loads((out / "stage.json").read_text())["status"] if name != "report" else "-"
            calls.append((name, "kept" if (out / "partial").exists() else "clean"))
            out.mkdir(parents=True, exist_ok=True)
            (out / "partial").write_text("x")
            if name in interrupt_at:
                interrupt_at.discard(name)
                raise KeyboardInterrupt
            assert status in ("running", "-")
            return f"{name} ok"
        return stage

    monkeypatch.setattr(run_driver, "STAGE_FUNCTIONS", {name: make(name) for name in run_lib.STAGES})
    return calls, interrupt_at


def test_driver_skips_resumes_and_reruns(tmp_path, fake_stages):
    calls, interrupt_at = fake_stages
    cfg = micro_config(tmp_path / "run")
    quiet = lambda message: None  # noqa: E731
    interrupt_at.add("sft")
    with pytest.raises(KeyboardInterrupt):
        run_lib.execute(cfg, log=quiet)
    assert calls == [("data", "clean"), ("warm_start", "clean"), ("sft", "clean")]
    assert run_lib.read_stage(tmp_path / "run" / "sft")["status"] == "running"

    calls.clear()
    assert [s.status for s in run_lib.plan(cfg)] == ["done", "done", "resume", "fresh", "fresh", "always"]
    summaries = run_lib.execute(cfg, log=quiet)
    assert calls == [("sft", "kept"), ("grpo", "clean"), ("eval", "clean"), ("report", "clean")]
    assert summaries["data"] == "data ok" and summaries["grpo"] == "grpo ok"

    calls.clear()
    run_lib.execute(cfg, log=quiet)
    assert calls == [("report", "kept")]

    calls.clear()  # a changed GRPO config: its directory is cleared and it runs again, then eval
    changed = micro_config(tmp_path / "run", grpo={**MICRO["grpo"], "steps": 13})
    messages = []
    run_lib.execute(changed, log=messages.append)
    assert calls == [("grpo", "clean"), ("eval", "clean"), ("report", "kept")]
    cleared = [m for m in messages if "cleared" in m]  # what was thrown away is said, stage by stage
    assert len(cleared) == 2 and "[4/6] grpo: its config or an earlier stage changed" in cleared[0]
    assert str(tmp_path / "run" / "eval") in cleared[1]


def test_a_run_started_twice_stops_the_second_before_it_writes(tmp_path, fake_stages):
    """Another process holds the run directory (a relaunch while the first copy still runs): the
    second stops with one line; once the holder is gone (SIGKILL included) a rerun proceeds."""
    cfg = micro_config(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tailor_jax.atomic import one_writer\n"
         "with one_writer(sys.argv[1], 'tailor-jax run'):\n    print('held', flush=True); time.sleep(600)",
         str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TailorError, match=r"another process is writing .*run \(`tailor-jax run` started twice\?\)"):
            run_lib.execute(cfg, log=lambda message: None)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    calls, _ = fake_stages
    run_lib.execute(cfg, log=lambda message: None)  # the kill released the lock
    assert [name for name, _ in calls] == ["data", "warm_start", "sft", "grpo", "eval", "report"]


def test_schedule_errors_stop_the_plan_before_any_stage(tmp_path):
    cfg = micro_config(tmp_path / "run", sft={**MICRO["sft"], "optimizer": {"lr": 1e-3, "warmup_steps": 50}})
    with pytest.raises(TailorError, match=r"sft.optimizer: warmup_steps \(50\) exceeds the total number of steps \(40\)"):
        run_lib.execute(cfg, log=lambda message: None)
    cfg = micro_config(tmp_path / "run", grpo={**MICRO["grpo"], "optimizer": {"lr": 1e-4, "warmup_steps": 13}})
    with pytest.raises(TailorError, match=r"grpo.optimizer: warmup_steps \(13\) exceeds the total number of steps \(12\)"):
        run_lib.execute(cfg, log=lambda message: None)
    assert not (tmp_path / "run").exists()


def test_ungeneratable_eval_levels_stop_the_plan(tmp_path):
    # iGSM's test split has no 2-op templates: found in the plan, not after SFT and GRPO
    cfg = run_lib.load_run_config("configs/igsm-tiny.yaml", [f"run_dir={tmp_path / 'run'}", "eval.levels=[2,4]"])
    with pytest.raises(TailorError, match="eval.levels: level 2: no test-split iGSM template"):
        run_lib.plan(cfg)
    cfg = run_lib.load_run_config("configs/igsm-tiny.yaml", [f"run_dir={tmp_path / 'run'}", "grpo.eval.task_options={split: test}",
                                                             "grpo.eval.levels=[2]"])
    with pytest.raises(TailorError, match="grpo.eval.levels: level 2"):
        run_lib.plan(cfg)


@pytest.mark.parametrize(
    "override, where",
    [("grpo.task_options={steps: 6-12}", "grpo.task_options"),
     ("grpo.curriculum=[{start_step: 50, task_options: {steps: 6-15}}]", "grpo.curriculum stage at step 50")],
)
def test_ungeneratable_grpo_problems_stop_the_plan(tmp_path, override, where):
    # gf-improve tags ops from a pool of 9 numbers: GRPO on longer chains cannot be generated
    cfg = run_lib.load_run_config("configs/gf-improve.yaml", [f"run_dir={tmp_path / 'run'}", override])
    with pytest.raises(TailorError, match=f"^{where}: gf tag_pool 9 must be 0"):
        run_lib.plan(cfg)
    assert not (tmp_path / "run").exists()


def test_dry_run_writes_nothing(tmp_path, capsys):
    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump({**MICRO, "run_dir": str(tmp_path / "run")}))
    import argparse

    run_lib.run(argparse.Namespace(config=str(config), overrides=["grpo.steps=5"], dry_run=True))
    out = capsys.readouterr().out
    assert "plan for" in out and "[4/6] grpo       run" in out and "steps: 5" in out
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------
# Warm-start data.
def test_task_trace_warm_start_is_mixed_and_verified(tmp_path):
    cfg = micro_config(tmp_path)
    records = list(get_task("gf", p=11, steps="2-5").generate(200, seed=3))
    demos = run_lib.warm_start_records(cfg, records)
    assert {d["primitive"] for d in demos} == {"forward", "backward"}
    task = get_task("gf", p=11)
    for demo in demos:
        trace = demo["completion"].split("<think>")[1].split("</think>")[0]
        assert check_trace(demo, trace) == []
        assert task.reward("binary", demo, demo["completion"]) == 1.0
    kinds = {(d["kind"], d["primitive"]) for d in demos}
    assert len(kinds) == 4  # both strategies on both kinds


def test_diversity_stats_by_hand():
    demos = [{"completion": "a b a", "primitive": "p"}, {"completion": "a b c", "primitive": "q"}]
    stats = run_lib.diversity_stats(demos)
    assert stats["primitives"] == {"p": 1, "q": 1} and stats["num_primitives"] == 2
    assert stats["distinct_1"] == pytest.approx(3 / 6)  # {a, b, c} over 6 words
    assert stats["distinct_2"] == pytest.approx(3 / 4)  # {ab, ba, bc} over 4 bigrams
    assert stats["distinct_3"] == pytest.approx(2 / 2)
    assert stats["mean_words"] == 3.0


def test_strategy_on_a_task_without_strategies_is_an_error(tmp_path):
    cfg = micro_config(tmp_path, task="kk", task_options={}, warm_start={"method": "task_trace", "strategy": "mixed"})
    with pytest.raises(TailorError, match="applies to the gf task only"):
        run_lib.warm_start_records(cfg, list(get_task("kk", people=2).generate(2, seed=0)))


def test_held_out_sets_exclude_training_problems(tmp_path):
    cfg = micro_config(tmp_path, data={**MICRO["data"], "num_train": 400, "train_options": {"steps": 2}},
                       eval={"levels": [2], "per_level": 30, "max_new_tokens": 16},
                       grpo={**MICRO["grpo"], "task_options": {"steps": 2}, "eval": {"levels": [2], "per_level": 30}})
    (tmp_path / "data").mkdir()
    run_lib.run_data(cfg, tmp_path / "data")
    from tailor_jax.data.jsonl import read_jsonl

    train = {run_lib.problem_key(r) for r in read_jsonl(tmp_path / "data" / "train.jsonl")}
    held_sft = [run_lib.problem_key(r) for r in read_jsonl(tmp_path / "data" / "sft_eval.jsonl")]
    held_eval = [run_lib.problem_key(r) for r in run_lib.eval_records(cfg)]
    grpo = run_lib.grpo_config(cfg)
    held_grpo = [run_lib.problem_key(r) for r in grpo_lib.eval_problems(grpo)]
    unfiltered = grpo_lib.eval_problems(dataclasses.replace(grpo, eval=dataclasses.replace(grpo.eval, exclude_file=None)))
    assert len(held_sft) == 8 and len(held_eval) == 30 and len(held_grpo) == 30
    assert not train & set(held_sft) and not train & set(held_eval) and not train & set(held_grpo)
    assert train & {run_lib.problem_key(r) for r in unfiltered}  # the pool is small enough to collide


def test_eval_command_follows_level_overrides_and_excludes_the_pool(tmp_path, monkeypatch):
    import argparse

    from tailor_jax.eval import evaluate
    from tailor_jax.run import eval_command

    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump({**MICRO, "run_dir": str(tmp_path), "data": {**MICRO["data"], "num_train": 400,
                                                                                  "train_options": {"steps": 2}}}))
    cfg = run_lib.load_run_config(config)
    (tmp_path / "data").mkdir()
    run_lib.run_data(cfg, tmp_path / "data")
    (tmp_path / "eval").mkdir()  # what the run's eval stage saved (levels [3])
    write_jsonl(tmp_path / "eval" / "records.jsonl", run_lib.eval_records(cfg))
    seen = []
    monkeypatch.setattr(evaluate, "evaluate_model", lambda path, task, records, **_: seen.append(records) or {})
    monkeypatch.setattr(evaluate, "describe", lambda *a, **k: "")
    eval_command.run(argparse.Namespace(config=str(config), overrides=["eval.levels=[2,4]", "eval.per_level=25"],
                                    checkpoint="unused", out=None))
    train = {run_lib.problem_key(r) for r in read_jsonl(tmp_path / "data" / "train.jsonl")}
    assert [r["k"] for r in seen[0]] == [2] * 25 + [4] * 25  # the overridden levels, not the run's [3]
    assert not train & {run_lib.problem_key(r) for r in seen[0]}
    eval_command.run(argparse.Namespace(config=str(config), overrides=[], checkpoint="unused", out=None))
    assert seen[1] == run_lib.eval_records(cfg)  # unchanged config: the run's own eval problems


# ---------------------------------------------------------------------------------------
# The real thing, small: SIGKILL during SFT, SIGINT during GRPO, resume, then all skipped.
def _launch(config: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.Popen([sys.executable, "-m", "tailor_jax.cli", "run", str(config)], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _checkpoint_steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.glob("checkpoints/*") if p.name.isdigit())


def _logged_steps(metrics: Path) -> list[int]:
    """Step numbers in write order (a resumed trainer appends after the earlier lines)."""
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line or '"reward"' in line]


@pytest.mark.slow  # four `tailor-jax run` processes (imports + compiles each): ~1.5 min idle, ~5 min on a busy CPU
def test_micro_run_survives_sigkill_and_sigint(tmp_path):
    run_dir = tmp_path / "run"
    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump({**MICRO, "run_dir": str(run_dir)}))
    log = tmp_path / "log.txt"

    # 1. SIGKILL once SFT has a checkpoint (and has not finished).
    proc = _launch(config, log)
    _wait_for(lambda: _checkpoint_steps(run_dir / "sft"), proc, "the first SFT checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_lib.read_stage(run_dir / "sft")["status"] == "running", log.read_text()[-2000:]
    killed_at = _checkpoint_steps(run_dir / "sft")[-1]
    data_stamp = (run_dir / "data" / "stage.json").stat().st_mtime_ns

    # 2. Rerun: SFT resumes from its checkpoint; SIGINT during GRPO saves and exits with 130.
    proc = _launch(config, log)
    _wait_for(lambda: len(_checkpoint_steps(run_dir / "grpo")) > 0, proc, "the first GRPO checkpoint")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=240) == 130, log.read_text()[-2000:]
    grpo_saved = _checkpoint_steps(run_dir / "grpo")[-1]
    assert grpo_saved < MICRO["grpo"]["steps"]
    assert run_lib.read_stage(run_dir / "sft")["status"] == "done"
    assert run_lib.read_stage(run_dir / "grpo")["status"] == "running"

    # 3. Rerun to the end.
    proc = _launch(config, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert (run_dir / "data" / "stage.json").stat().st_mtime_ns == data_stamp  # never redone
    assert text.count("[1/6] data: running") == 1 and "[1/6] data: skipped" in text
    assert "[3/6] sft: resuming" in text and "[4/6] grpo: resuming" in text

    sft_steps = _logged_steps(run_dir / "sft" / "metrics.jsonl")
    assert sft_steps.count(1) == 1 and sft_steps[-1] == MICRO["sft"]["steps"], "SFT must not start over after the kill"
    restarts = [i for i in range(1, len(sft_steps)) if sft_steps[i] != sft_steps[i - 1] + 1]
    assert len(restarts) <= 1
    resumed_from = sft_steps[restarts[0]] - 1 if restarts else killed_at
    assert resumed_from == killed_at  # the step of the checkpoint that was on disk at the kill
    grpo_steps = _logged_steps(run_dir / "grpo" / "metrics.jsonl")
    assert grpo_steps.count(1) == 1 and grpo_steps[-1] == MICRO["grpo"]["steps"]
    assert grpo_steps[grpo_steps.index(grpo_saved) + 1] == grpo_saved + 1

    for stage in ("data", "warm_start", "sft", "grpo", "eval"):
        assert run_lib.read_stage(run_dir / stage)["status"] == "done"
    for model in ("sft", "grpo"):
        assert (run_dir / model / "model" / "config.json").is_file()
        result = json.loads((run_dir / "eval" / f"{model}.json").read_text())
        assert result["num_problems"] == 4 and set(result["acc_by_level"]) == {"3"}
    report = (run_dir / "report.md").read_text()
    assert "| sft |" in report and "| grpo |" in report
    assert (run_dir / "plots" / "sft_loss.png").stat().st_size > 5000
    assert (run_dir / "plots" / "grpo_reward.png").stat().st_size > 5000

    # 4. Once more: every stage is skipped.
    proc = _launch(config, log)
    assert proc.wait(timeout=300) == 0
    last = log.read_text()[len(text):]
    assert all(f"] {s}: skipped" in last for s in ("data", "warm_start", "sft", "grpo", "eval")), last


# ---------------------------------------------------------------------------------------
# The quickstart's own path (the `tailor` warm start), shrunk to about a minute, in process.
QUICKSTART_MICRO = [
    "mesh_preset=single-device", "data.num_train=40", "data.num_sft_eval=8",
    "sft.steps=8", "sft.optimizer.warmup_steps=2", "sft.batch_size=4", "sft.log_every=1", "sft.eval_batches=1",
    "sft.model.overrides={hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2, num_kv_heads: 1, head_dim: 16}",
    "sft.checkpoint={every_steps: 4, keep: 1, async_save: false}",
    "grpo.steps=2", "grpo.rollout={prompts_per_step: 2, num_generations: 2, max_new_tokens: 16, temperature: 1.0}",
    "grpo.eval={levels: [3], per_level: 2, every: 0}", "grpo.checkpoint={every_steps: 1, keep: 1, async_save: false}",
    "eval.levels=[3]", "eval.per_level=4", "eval.max_new_tokens=16",
]


def test_quickstart_micro_run_with_the_tailor_warm_start(tmp_path):
    cfg = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}", *QUICKSTART_MICRO])
    assert cfg.warm_start.method == "tailor"
    lines: list[str] = []
    run_lib.execute(cfg, log=lines.append)
    for stage in ("data", "warm_start", "sft", "grpo", "eval"):
        assert run_lib.read_stage(tmp_path / stage)["status"] == "done", "\n".join(lines)

    # the warm start is the Tailor pipeline's: its stages ran, its demonstrations are verified answers
    task = get_task("gf", p=11)
    demos = list(read_jsonl(tmp_path / "warm_start" / "sft.jsonl"))
    assert len(demos) == 40 and (tmp_path / "warm_start" / "tailor" / "curate" / "report.json").is_file()
    assert len({d["primitive"] for d in demos}) >= 2  # a mix of primitives, not one trace style
    assert all(task.reward("binary", d, d["completion"]) == 1.0 for d in demos)
    pool = {run_lib.problem_key(d) for d in demos}
    assert pool == {run_lib.problem_key(r) for r in read_jsonl(tmp_path / "data" / "train.jsonl")}

    # no held-out problem is in the SFT pool: the SFT eval set, the final eval, GRPO's eval
    held_out = [*read_jsonl(tmp_path / "data" / "sft_eval.jsonl"), *read_jsonl(tmp_path / "eval" / "records.jsonl"),
                *grpo_lib.eval_problems(run_lib.grpo_config(cfg))]
    assert len(held_out) == 8 + 4 + 2 and not pool & {run_lib.problem_key(r) for r in held_out}

    # the report holds numbers: each model's held-out accuracy as evaluated
    report = (tmp_path / "report.md").read_text()
    held_out_table = report.split("## Held-out evaluation")[1].split("##")[0]
    for model in ("sft", "grpo"):
        result = json.loads((tmp_path / "eval" / f"{model}.json").read_text())
        assert result["num_problems"] == 4
        percent = f"{100 * result['acc']:.1f}"
        assert f"| {model} | {percent} | {percent} |" in held_out_table, held_out_table
        assert f"{model} acc {result['acc']:.3f}" in report  # the eval stage's summary line
        # every completion labelled with the primitive it follows (the run layer passes the labeller)
        assert sum(row["count"] for row in result["strategies"].values()) == 4
    # and GRPO's periodic evaluation logs the strategy mix of its greedy outputs
    logged = [m for m in read_jsonl(tmp_path / "grpo" / "metrics.jsonl") if "eval/acc" in m]
    assert logged and all(sum(v for k, v in m.items() if k.startswith("eval/strategy/")) == pytest.approx(1.0)
                          for m in logged)
    assert "| warm_start | done |" in report and "40 demonstrations (tailor:" in report
    assert re.search(r"\| sft \| done \| [0-9.]+ \| 8 steps, loss [0-9.]+", report), report
