"""`tailor-jax study`: bad study files stop before any cell; one `seed` varies data, init and
sampling; the study report's statistics; a micro study killed by SIGKILL mid-cell and rerun
ends with the same numbers as a cell that ran uninterrupted."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tailor_jax import cli
from tailor_jax import run as run_lib
from tailor_jax.config import config_from_dict
from tailor_jax.data.jsonl import read_jsonl
from tailor_jax.eval import study_report
from tailor_jax.study import load_study, write_manifest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

# configs/quickstart.yaml shrunk to a micro run (tiny model, a few steps per stage).
MICRO_OVERRIDES = {
    "mesh_preset": "single-device",
    "data": {"num_train": 32, "num_sft_eval": 4, "train_options": {"steps": "2-3"}},
    "warm_start": {"method": "rule_based"},
    "sft.steps": 4, "sft.batch_size": 4, "sft.log_every": 1, "sft.eval_batches": 1,
    "sft.model.overrides": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
                            "num_kv_heads": 1, "head_dim": 16},
    "sft.checkpoint": {"every_steps": 2, "keep": 1, "async_save": False},
    "sft.optimizer.warmup_steps": 1,
    "sft.data.seq_len": 160,
    "grpo.task_options": {"steps": 3},
    "grpo.steps": 4,
    "grpo.rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 16, "temperature": 1.0},
    "grpo.eval": {"levels": [3], "per_level": 2, "every": 2},
    # the micro model earns no reward, so its advantages are zero: with a k1 KL term the update
    # still moves the weights every step (a resume that went wrong shows in them)
    "grpo.loss": {"beta": 0.1, "kl": "k1"},
    "grpo.checkpoint": {"every_steps": 1, "keep": 1, "async_save": False},
    "eval": {"levels": [3], "per_level": 2, "max_new_tokens": 16},
}


def write_study(tmp_path: Path, grid: dict, **extra) -> Path:
    path = tmp_path / "study.yaml"
    spec = {"base": str(QUICKSTART), "study_dir": str(tmp_path / "study"), "overrides": MICRO_OVERRIDES, "grid": grid, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------
# Bad study files.
@pytest.mark.parametrize("grid, extra, message", [
    ({}, {}, "`grid` must map at least one config key"),
    ({"seed": []}, {}, "grid axis 'seed' has no values"),
    ({"warm_start.methd": ["tailor"]}, {}, "unknown config key 'warm_start.methd'"),
    ({"sft.stepz": [10]}, {}, "sft: unknown config key 'stepz'"),
    ({"warm_start.method": ["tailor", "no_such_method"]}, {}, "cell no_such_method"),
    ({"sft.optimizer.warmup_steps": [1, 5000]}, {}, "sft.optimizer"),  # a schedule that cannot build: run.plan
    ({"eval.levels": [[3], [40]]}, {}, "eval.levels: level 40"),  # problems that cannot be generated: run.plan
    ({"seed": [0]}, {"seeds": [1]}, "unknown study key(s) seeds"),
    ({"run_dir": ["x"]}, {}, "run_dir is set by the study"),
    ({"seed": [0]}, {"threshold": 2}, "threshold must be"),
    ({"seed": [0]}, {"base": "no-such.yaml"}, "base (relative to the study file): config file"),
    ({"warm_start.method": ["tailor", "rule_based"]}, {"compare": [["rule_based", "mixed"]]},
     "compare: mixed is not a method of this grid; its methods are rule_based, tailor"),
    ({"seed": [0]}, {"compare": ["a", "b"]}, "compare must be a list of method pairs"),
    ({"seed": [0]}, {"archive_dir": 3}, "archive_dir must be a directory path"),
])
def test_bad_study_files_stop_with_one_line_before_any_cell(tmp_path, capsys, grid, extra, message):
    path = write_study(tmp_path, grid, **extra)
    assert cli.main(["study", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "study").exists()  # nothing ran, nothing was written


def test_cells_are_the_grid_in_order_with_variants(tmp_path):
    path = write_study(tmp_path, {"seed": [0, 1], "method": {"tailor": {"warm_start.method": "tailor"},
                                                             "fwd": {"warm_start": {"method": "task_trace", "strategy": "forward"}}}},
                       compare=[["fwd", "tailor"]])
    study = load_study(path)
    assert study.compare == (("fwd", "tailor"),)
    assert json.loads(write_manifest(study).read_text())["compare"] == [["fwd", "tailor"]]
    assert [c.name for c in study.cells] == ["seed-0_tailor", "seed-0_fwd", "seed-1_tailor", "seed-1_fwd"]
    fwd = config_from_dict(run_lib.RunConfig, study.cells[3].config)
    assert (fwd.seed, fwd.warm_start.method, fwd.warm_start.strategy) == (1, "task_trace", "forward")
    assert fwd.run_dir == str(tmp_path / "study" / "seed-1_fwd") and fwd.sft["steps"] == 4  # study overrides applied


def test_redistill_cells_take_their_teacher_from_the_same_seeds_rule_based_cell(tmp_path):
    path = write_study(tmp_path, {"seed": [0, 1], "method": {"rule_based": {"warm_start.method": "rule_based"},
                                                             "redistill": {"warm_start.method": "redistill"}}})
    cells = {c.name: config_from_dict(run_lib.RunConfig, c.config) for c in load_study(path).cells}
    assert cells["seed-1_redistill"].teacher_from == (str(tmp_path / "study" / "seed-0_rule_based"),
                                                      str(tmp_path / "study" / "seed-1_rule_based"))
    assert not cells["seed-1_rule_based"].teacher_from
    teacher = run_lib.stage_hashes(run_lib.teacher_config(cells["seed-1_redistill"]))
    same_seed, other_seed = (run_lib.stage_hashes(cells[f"seed-{s}_rule_based"]) for s in (1, 0))
    for stage in run_lib.TEACHER_STAGES:  # what run.adopt_teacher matches on
        assert teacher[stage] == same_seed[stage] and teacher[stage] != other_seed[stage]


def test_shipped_studies_validate():
    for path in sorted((REPO / "configs" / "studies").glob("*.yaml")):
        study = load_study(path)
        assert len(study.cells) >= 3
        for cell in study.cells:
            run_lib.plan(config_from_dict(run_lib.RunConfig, cell.config))


def _stand_in_cells(launched: list[str], fail: set[str]):
    """A `launch_cell` whose process "trains" the cell (writes its stages as done, as a finished
    `tailor-jax run` leaves them, with a model and demonstrations) or fails (cells named in `fail`)."""
    def launch(cell):
        launched.append(cell.name)
        cfg = config_from_dict(run_lib.RunConfig, cell.config)
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        code = "print('boom: out of cheese'); raise SystemExit(3)" if cell.name in fail else "pass"
        if cell.name not in fail:
            for stage, digest in run_lib.stage_hashes(cfg).items():
                run_lib.write_stage(cell.run_dir / stage, {"hash": digest, "status": "done", "seconds": 2.0})
            (cell.run_dir / "eval" / "sft.json").write_text(json.dumps({"acc": 0.25}))
            (cell.run_dir / "sft" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
            for model in ("sft", "grpo"):
                (cell.run_dir / model / "model").mkdir()
                (cell.run_dir / model / "model" / "model.safetensors").write_bytes(b"weights")
            (cell.run_dir / "warm_start" / "sft.jsonl").write_text("{}\n")
            (cell.run_dir / "report.md").write_text("done")
        log = open(cell.run_dir / "run.log", "w")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
        proc.log_file = log
        return proc

    return launch


def test_driver_runs_in_order_skips_done_cells_and_reports_failures(tmp_path, monkeypatch):
    """The study loop with stand-in cell processes: one "trains" (writes its stages as done, as
    a finished `tailor-jax run` leaves them), one fails; the rerun skips the finished cell."""
    from tailor_jax import study as study_lib

    launched, fail = [], {"seed-1"}
    monkeypatch.setattr(study_lib, "launch_cell", _stand_in_cells(launched, fail))
    study = load_study(write_study(tmp_path, {"seed": [0, 1]}))
    lines: list[str] = []
    assert study_lib.run_study(study, log=lines.append) == ["seed-1"]
    assert launched == ["seed-0", "seed-1"]
    # the ETA from the cell's recorded stage seconds (a resumed cell's include its earlier parts)
    # when they exceed the wall time this study saw it run
    eta = f"1 to go, ETA {study_lib._duration(study_lib.recorded_seconds(study.cells[0].run_dir))}"
    assert any("[1/2] seed-0: done in" in line and "held-out acc sft 25.0%" in line and eta in line for line in lines), (eta, lines)
    assert any("[2/2] seed-1: FAILED (exit 3): boom: out of cheese" in line for line in lines), lines

    fail.clear()
    lines.clear()
    assert study_lib.run_study(study, log=lines.append) == []
    assert launched == ["seed-0", "seed-1", "seed-1"]  # the finished cell is not started again
    assert lines[0].startswith("[1/2] seed-0: done earlier") and "1 of 2 cells done" in lines[1]


def test_archived_cells_are_restored_when_the_study_directory_is_lost(tmp_path, monkeypatch, capsys):
    """A study with archive_dir keeps each finished cell's record (no weights, no data); on a new
    machine (the study directory gone) the finished cells are restored and skipped, and a record
    of another config is not restored: that cell runs afresh."""
    from tailor_jax import study as study_lib

    launched, fail = [], {"seed-1"}
    monkeypatch.setattr(study_lib, "launch_cell", _stand_in_cells(launched, fail))
    path = write_study(tmp_path, {"seed": [0, 1]}, archive_dir=str(tmp_path / "archive"))
    study = load_study(path)
    assert study_lib.run_study(study, log=lambda line: None) == ["seed-1"]
    record = tmp_path / "archive" / "seed-0"
    kept = {str(p.relative_to(record)) for p in record.rglob("*") if p.is_file()}
    assert {"report.md", "run.log", "eval/sft.json", "sft/metrics.jsonl", "sft/stage.json", "grpo/stage.json"} <= kept
    assert not any(name.endswith(("model.safetensors", "sft.jsonl")) for name in kept), kept
    assert not (tmp_path / "archive" / "seed-1").exists()  # failed: nothing to keep

    shutil.rmtree(tmp_path / "study")
    assert cli.main(["study", str(path), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"\] seed-0 +archived ", listed) and re.search(r"\] seed-1 +new ", listed), listed
    assert not (tmp_path / "study").exists()  # a dry run restores nothing
    fail.clear()
    lines: list[str] = []
    study_lib.run_study(study, log=lines.append)
    assert launched == ["seed-0", "seed-1", "seed-1"]  # seed-0 restored, not run again
    assert any("restored 1 finished cell(s)" in line and "seed-0" in line for line in lines), lines
    assert "[1/2] seed-0: done earlier (held-out acc sft 25.0%)" in lines
    assert (tmp_path / "archive" / "seed-1" / "report.md").is_file()  # archived once it finished
    assert study_lib.check_cells(study) == ["done", "done"]

    # another evaluation: the records' training stages still match but not their eval stage; a
    # restored cell would resume from models it does not have, so it is not restored: it runs afresh
    shutil.rmtree(tmp_path / "study")
    study = load_study(write_study(tmp_path, {"seed": [0, 1]}, archive_dir=str(tmp_path / "archive"),
                                   overrides={**MICRO_OVERRIDES, "eval": {**MICRO_OVERRIDES["eval"], "per_level": 3}}))
    assert study_lib.restore_archived(study) == [] and study_lib.check_cells(study) == ["new", "new"]
    assert study_lib.run_study(study, log=lambda line: None) == []
    assert launched[3:] == ["seed-0", "seed-1"]


def test_an_archived_teacher_keeps_its_policy_for_redistill_cells(tmp_path, monkeypatch):
    """A rule_based cell that redistill cells take as their teacher keeps its final policy in the
    archive (nothing else does), so a redistill cell on a new machine adopts the restored teacher
    instead of training it again."""
    from tailor_jax import study as study_lib
    from tailor_jax.run.driver import adopt_teacher

    launched: list[str] = []
    monkeypatch.setattr(study_lib, "launch_cell", _stand_in_cells(launched, fail={"redistill"}))
    path = write_study(tmp_path, {"method": {"rule_based": {"warm_start.method": "rule_based"},
                                             "redistill": {"warm_start.method": "redistill"}}},
                       archive_dir=str(tmp_path / "archive"))
    study = load_study(path)
    assert study_lib.run_study(study, log=lambda line: None) == ["redistill"]
    record = tmp_path / "archive" / "rule_based"
    assert (record / "grpo" / "model" / "model.safetensors").is_file()
    assert not (record / "sft" / "model").exists()  # only what the redistill cell samples from

    shutil.rmtree(tmp_path / "study")
    assert study_lib.restore_archived(study) == ["rule_based"]
    redistill = config_from_dict(run_lib.RunConfig, study.cells[1].config)
    out = tmp_path / "study" / "redistill" / "teacher"
    assert adopt_teacher(run_lib.teacher_config(redistill), redistill.teacher_from, out) == study.cells[0].run_dir
    assert (out / "grpo" / "model" / "model.safetensors").read_bytes() == b"weights"


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_kill_stops_the_study_by_sigint_to_its_running_cells(tmp_path, monkeypatch, signame):
    """`kill` or `kill -INT` of a study started in the background (where the shell makes SIGINT
    ignored): the running cell gets SIGINT, as on Ctrl-C, and the driver says how to continue."""
    import os
    import signal
    import threading

    from tailor_jax import study as study_lib

    marker = tmp_path / "got-sigint"
    child = (f"import signal, sys, time, pathlib\n"
             f"def stop(*_): pathlib.Path({str(marker)!r}).write_text('1'); sys.exit(130)\n"
             f"signal.signal(signal.SIGINT, stop)\nprint('ready', flush=True)\ntime.sleep(60)\n")

    def fake_launch(cell):
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(cell.run_dir / "run.log", "w")
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=log, stderr=subprocess.STDOUT)
        proc.log_file = log
        return proc

    monkeypatch.setattr(study_lib, "launch_cell", fake_launch)
    study = load_study(write_study(tmp_path, {"seed": [0]}))
    run_log = study.cells[0].run_dir / "run.log"
    signum = getattr(signal, signame)
    threading.Timer(0.1, lambda: (_wait_for(lambda: run_log.is_file() and "ready" in run_log.read_text()),
                                  os.kill(os.getpid(), signum))).start()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
    try:
        lines: list[str] = []
        with pytest.raises(KeyboardInterrupt):
            study_lib.run_study(study, log=lines.append)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # the handlers are put back
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert marker.read_text() == "1"  # the cell got SIGINT (and would have saved a checkpoint)
    assert "interrupted; run the same command again" in lines[-1]
    assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]


@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
def test_a_cell_process_gets_sigint_back_when_the_study_ignores_it():
    import signal

    from tailor_jax import study as study_lib

    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
        # preexec_fn forks (the warning is filtered above); the child only resets a signal and execs
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             preexec_fn=study_lib.prepare_child, check=True).stdout
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert (out.strip(), plain.strip()) == ("True", "False")  # without it the child would ignore Ctrl-C


def _wait_for(condition, seconds: float = 30.0) -> None:
    import time

    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------
# One seed for everything random.
def test_seed_varies_data_init_and_sampling(tmp_path):
    from tailor_jax.model import create_model, get_preset
    from tailor_jax.train import grpo as grpo_lib

    def config(seed, name):
        return run_lib.load_run_config(QUICKSTART, [f"run_dir={tmp_path / name}", f"seed={seed}", "data.num_train=50"])

    a, b, again = config(0, "a"), config(1, "b"), config(0, "again")
    assert run_lib.stage_hashes(a) == run_lib.stage_hashes(again)
    assert all(run_lib.stage_hashes(a)[s] != run_lib.stage_hashes(b)[s] for s in run_lib.STAGES if s != "report")
    # data generation
    for cfg in (a, b):
        out = Path(cfg.run_dir) / "data"
        out.mkdir(parents=True)
        run_lib.run_data(cfg, out)
    problems = [[r["question"] for r in read_jsonl(Path(cfg.run_dir) / "data" / "train.jsonl")] for cfg in (a, b)]
    assert problems[0] != problems[1]
    # init (and the SFT data order, which uses the same seed)
    sft_a, sft_b = run_lib.sft_config(a), run_lib.sft_config(b)
    assert sft_a.seed != sft_b.seed
    tiny = get_preset("tiny").replace(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                      num_kv_heads=1, head_dim=8)
    weights = [create_model(tiny, seed=s.seed).embed[...] for s in (sft_a, sft_b)]
    assert float(abs(weights[0] - weights[1]).max()) > 0
    # GRPO prompts and rollout sampling
    grpo_a, grpo_b = run_lib.grpo_config(a), run_lib.grpo_config(b)
    assert grpo_lib.step_records(grpo_a, 1, 0, None) != grpo_lib.step_records(grpo_b, 1, 0, None)
    assert grpo_lib.derive_seed(grpo_a.seed, 1, 0, 1) != grpo_lib.derive_seed(grpo_b.seed, 1, 0, 1)
    # the warm start's own sampling (Tailor pipeline seed), and the held-out test set stays put
    assert a.warm_start.options["seed"] != b.warm_start.options["seed"]
    assert a.eval == b.eval
    # without `seed` the written section seeds stand
    plain = run_lib.load_run_config(QUICKSTART)
    assert (plain.seed, plain.data.seed, "seed" in plain.sft) == (None, 1, False)


# ---------------------------------------------------------------------------------------
# The report's numbers.
def _fake_cell(study_dir: Path, name: str, sft_acc: float, rl_acc: float, curve: list[float], **extra) -> None:
    cell = study_dir / name
    (cell / "eval").mkdir(parents=True)
    (cell / "grpo").mkdir()
    for model, acc in (("sft", sft_acc), ("grpo", rl_acc)):
        (cell / "eval" / f"{model}.json").write_text(json.dumps({"acc": acc, "acc_by_level": {"3": acc}, **extra}))
    lines = [{"step": 10 * i, "time": 0.0, "eval/acc": a, **({"step_time": 2.0} if i else {})} for i, a in enumerate(curve)]
    (cell / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_cells_already_at_the_threshold_before_rl_are_counted(tmp_path):
    # a cell at the threshold at GRPO step 0 has "0 steps to the threshold": the report says how
    # many such cells a method has, since they say nothing about how fast RL rises
    study_dir = tmp_path / "s"
    _fake_cell(study_dir, "strong-0", 0.9, 0.95, [0.9, 0.95, 0.95])
    _fake_cell(study_dir, "weak-0", 0.5, 0.9, [0.5, 0.85, 0.9])
    cells = [{"name": "strong-0", "values": {"seed": 0, "method": "strong"}},
             {"name": "weak-0", "values": {"seed": 0, "method": "weak"}}]
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0], "method": ["strong", "weak"]},
                                                       "replicate_axis": "seed", "threshold": 0.8, "cells": cells}))
    text = study_report.write_study_report(study_dir).read_text()
    assert "cells reaching it: strong 1 of 1 (1 before RL), weak 1 of 1." in text


def test_study_comparison_mid_study_pairs_only_the_seeds_both_have():
    """A study still running: tailor has seeds 0 and 1, rule_based only seed 0. The comparison is
    tailor's seed 0 against rule_based's seed 0 (same data, same held-out problems), not tailor's
    two-seed mean against one seed, and it says a result was left out."""
    diff = study_report.difference({0: 0.5, 1: 0.7}, {0: 0.3})
    assert diff["paired"] and diff["n"] == 1 and diff["mean"] == pytest.approx(0.2)
    assert diff["unpaired_left_out"] == 1 and diff["ci95"] is None
    text = study_report.describe_comparison({"a": "tailor", "b": "rule_based", "metric": "rl_acc", **diff})
    assert text == ("tailor - rule_based, held-out accuracy after RL (%): +20.0 points (1 seed; too few for an "
                    "interval). Paired on the seeds both have: 1 result without a partner left out.")
    # with every seed shared nothing is left out and the sentence ends at the spread
    full = study_report.difference({0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.3, 1: 0.6, 2: 0.3})
    assert full["paired"] and full["n"] == 3 and full["unpaired_left_out"] == 0
    # no seed in common (e.g. two studies' cells): unpaired, Welch
    assert not study_report.difference({0: 0.5, 1: 0.7}, {2: 0.3, 3: 0.4})["paired"]


def test_study_report_statistics_by_hand(tmp_path):
    study_dir = tmp_path / "s"
    cells = []
    for seed, (t_sft, t_rl, r_sft, r_rl) in enumerate([(0.5, 0.9, 0.5, 0.7), (0.6, 0.8, 0.4, 0.65), (0.4, 1.0, 0.6, 0.75)]):
        _fake_cell(study_dir, f"tailor-{seed}", t_sft, t_rl, [t_sft, 0.85 if seed != 1 else 0.7, t_rl])
        _fake_cell(study_dir, f"rule-{seed}", r_sft, r_rl, [r_sft, 0.6, r_rl])
        cells += [{"name": f"tailor-{seed}", "values": {"seed": seed, "method": "tailor"}},
                  {"name": f"rule-{seed}", "values": {"seed": seed, "method": "rule_based"}}]
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0, 1, 2], "method": ["tailor", "rule_based"]},
                                                       "replicate_axis": "seed", "threshold": 0.8, "cells": cells}))
    path = study_report.write_study_report(study_dir)
    summary = json.loads((study_dir / "summary.json").read_text())
    rl = summary["methods"]["tailor"]["rl_acc"]
    assert rl["mean"] == pytest.approx(0.9) and rl["std"] == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof)
    assert rl["ci95"] == pytest.approx([0.9 - half, 0.9 + half])
    # paired differences tailor - rule_based after RL: 0.2, 0.15, 0.25
    diff = next(c for c in summary["comparisons"] if c["metric"] == "rl_acc")
    assert diff["paired"] and diff["mean"] == pytest.approx(0.2) and diff["std"] == pytest.approx(0.05)
    # steps to 80%: seeds 0 and 2 at step 10, seed 1 at step 20 = 40 s of GRPO (logged every 10 steps,
    # each step 2 s); rule_based never
    assert summary["cells"]["tailor-1"]["steps_to_threshold"] == 20 and summary["cells"]["tailor-1"]["seconds_to_threshold"] == 40.0
    assert summary["methods"]["rule_based"]["reached_threshold"] == 0
    # the study file's own pairs (`compare`) come first and replace the same pair the other way round
    manifest = json.loads((study_dir / "study.json").read_text())
    (study_dir / "study.json").write_text(json.dumps({**manifest, "compare": [["rule_based", "tailor"]]}))
    study_report.write_study_report(study_dir)
    extra = next(c for c in json.loads((study_dir / "summary.json").read_text())["comparisons"]
                 if (c["a"], c["b"], c["metric"]) == ("rule_based", "tailor", "rl_acc"))
    assert extra["mean"] == pytest.approx(-0.2) and extra["std"] == pytest.approx(0.05)
    text = path.read_text()
    assert ("rule_based - tailor, held-out accuracy after RL (%): -20.0 points +- 5.0 (std of the paired differences; "
            "95% CI [-32.4, -7.6], 3 seeds)") in text
    assert "tailor - rule_based" not in text
    assert "rule_based is lower than tailor beyond the seed spread" in text
    assert "after SFT (%): +0.0 points" in text and "the interval includes 0" in text
    for plot in ("rl_accuracy_by_step", "rl_accuracy_by_seconds", "accuracy"):
        assert (study_dir / "plots" / f"{plot}.png").stat().st_size > 5000


def test_study_comparison_after_rl_per_level(tmp_path):
    """KK's eval has 3 and 4 people and every model fails at 4: the headline (their mean) halves
    each difference, so the report also compares after RL per level, unhalved, and says plainly
    when a level is 0 everywhere."""
    study_dir = tmp_path / "s"
    cells = []
    for seed, (t3, r3) in enumerate([(0.4, 0.3), (0.5, 0.3)]):
        for method, acc3 in (("tailor", t3), ("rule_based", r3)):
            _fake_cell(study_dir, f"{method}-{seed}", 0.1, acc3 / 2, [0.1, acc3])
            for model in ("sft", "grpo"):  # the fake cell's eval: level 3 only; add level 4 at 0
                path = study_dir / f"{method}-{seed}" / "eval" / f"{model}.json"
                result = json.loads(path.read_text())
                result["acc_by_level"] = {"3": acc3 if model == "grpo" else 0.2, "4": 0.0}
                result.update(num_problems=100, num_by_level={"3": 50, "4": 50})
                path.write_text(json.dumps(result))
            cells.append({"name": f"{method}-{seed}", "values": {"seed": seed, "method": method}})
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0, 1], "method": ["tailor", "rule_based"]},
                                                       "replicate_axis": "seed", "threshold": 0.8, "cells": cells}))
    text = study_report.write_study_report(study_dir).read_text()
    assert "tailor - rule_based, held-out accuracy after RL (%): +7.5 points +- 3.5" in text
    assert "tailor - rule_based, held-out accuracy after RL at level 3 (%): +15.0 points +- 7.1" in text
    assert "tailor - rule_based, held-out accuracy after RL at level 4 (%): every cell of both scored 0 (2 seeds)." in text
    # what 50 problems a level leave uncertain: sqrt(p(1-p)/n) per cell, averaged over the four cells
    # (level 3 at 40, 30, 50, 30%: 6.9, 6.5, 7.1, 6.5 points; overall at half that on 100 problems);
    # level 4, 0 everywhere, has none to state
    (noise,) = [line for line in text.splitlines() if line.startswith("Sampling error of the evaluation alone")]
    assert "standard error of 3.9 points (mean over 4 cells); at level 3: 6.7. " in noise and "level 4" not in noise
    # one level only (the fake cells' own eval): a per-level line would repeat the headline
    single = tmp_path / "single"
    for seed in (0, 1):
        _fake_cell(single, f"tailor-{seed}", 0.1, 0.4, [0.1, 0.4])
        _fake_cell(single, f"rule_based-{seed}", 0.1, 0.3, [0.1, 0.3])
    (single / "study.json").write_text((study_dir / "study.json").read_text())
    metrics = {c["metric"] for c in study_report.summarize(study_report.load_study_dir(single))["comparisons"]}
    assert "rl_acc" in metrics and not any(m.startswith("rl_acc/") for m in metrics)


def test_study_report_shows_completions_cut_at_the_budget(tmp_path):
    study_dir = tmp_path / "s"
    _fake_cell(study_dir, "a", 0.5, 0.6, [0.5, 0.6], truncated=0.25)
    _fake_cell(study_dir, "b", 0.5, 0.6, [0.5, 0.6], truncated=0.0)
    cells = [{"name": "a", "values": {"seed": 0, "method": "long"}}, {"name": "b", "values": {"seed": 0, "method": "short"}}]
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0], "method": ["long", "short"]},
                                                       "replicate_axis": "seed", "threshold": 0.8, "cells": cells}))
    text = study_report.write_study_report(study_dir).read_text()
    assert "## Greedy completions cut at eval.max_new_tokens (%, scored wrong)" in text
    assert "| long | 25.0 (n=1) | 25.0 (n=1) |" in text and "| short | 0.0 (n=1) | 0.0 (n=1) |" in text


def test_study_report_names_cells_that_trained_on_the_same_demonstrations(tmp_path):
    # GF's rule_based trace is the forward walk: two method names, one data set
    study_dir = tmp_path / "s"
    demos = [{"id": f"p{i}", "question": f"q{i}", "completion": f"c{i}"} for i in range(3)]
    for name, primitive, completions in (("rule-0", "solution_trace", demos), ("fwd-0", "forward", demos),
                                          ("other-0", "forward", [{**d, "completion": "x"} for d in demos])):
        _fake_cell(study_dir, name, 0.5, 0.6, [0.5, 0.6])
        (study_dir / name / "warm_start").mkdir()
        (study_dir / name / "warm_start" / "sft.jsonl").write_text(
            "".join(json.dumps({**d, "primitive": primitive}) + "\n" for d in completions))
    cells = [{"name": n, "values": {"seed": 0, "method": m}} for n, m in (("rule-0", "rule_based"), ("fwd-0", "forward"),
                                                                         ("other-0", "other"))]
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0], "method": ["rule_based", "forward", "other"]},
                                                       "replicate_axis": "seed", "threshold": 0.8, "cells": cells}))
    text = study_report.write_study_report(study_dir).read_text()
    assert json.loads((study_dir / "summary.json").read_text())["same_demonstrations"] == [["rule-0", "fwd-0"]]
    assert "so their comparisons are of one data set under two names: rule-0 = fwd-0." in text


def test_study_report_gives_each_warm_starts_primitive_mix(tmp_path):
    # what a warm start is made of (GF's tailor set: mostly forward and backward walks) decides
    # which other method it is close to; a primitive one seed lacks counts as 0 in the mean
    study_dir = tmp_path / "s"
    mixes = {"tailor-0": {"forward": 3, "backward": 1}, "tailor-1": {"forward": 1, "backward": 0, "meet_in_middle": 1},
             "rule-0": {"solution_trace": 4}}
    for name, primitives in mixes.items():
        _fake_cell(study_dir, name, 0.5, 0.6, [0.5, 0.6])
        (study_dir / name / "warm_start").mkdir()
        (study_dir / name / "warm_start" / "stats.json").write_text(json.dumps({"num_demos": 4, "primitives": primitives}))
    cells = [{"name": n, "values": {"seed": int(n[-1]), "method": n.split("-")[0]}} for n in mixes]
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0, 1], "method": ["tailor", "rule"]},
                                                       "replicate_axis": "seed", "threshold": 0.8, "cells": cells}))
    text = study_report.write_study_report(study_dir).read_text()
    # tailor: forward 75% and 50%, backward 25% and 0%, meet_in_middle 0% and 50%
    assert "- tailor (n=2): forward 62.5 +- 17.7, meet_in_middle 25.0 +- 35.4, backward 12.5 +- 17.7" in text  # largest first
    assert "- rule (n=1): solution_trace 100.0\n" in text
    share = json.loads((study_dir / "summary.json").read_text())["methods"]["tailor"]["primitive/meet_in_middle"]
    assert share["n"] == 2 and share["values"] == [0.0, 0.5]


def test_study_report_gives_the_strategy_of_the_outputs_after_sft_and_after_rl(tmp_path):
    # Select and Improve's "select": which primitive the greedy outputs follow, before and after
    # RL; a strategy one seed's outputs never take counts as 0 in the mean
    study_dir = tmp_path / "s"
    shares = {("mixed-0", "sft"): {"forward": 0.5, "backward": 0.5}, ("mixed-0", "grpo"): {"forward": 1.0},
              ("mixed-1", "sft"): {"forward": 0.25, "backward": 0.5, "other": 0.25}, ("mixed-1", "grpo"): {"forward": 0.5, "backward": 0.5}}
    for name in ("mixed-0", "mixed-1"):
        _fake_cell(study_dir, name, 0.5, 0.6, [0.5, 0.6])
        for model in ("sft", "grpo"):
            result = {"acc": 0.5, "acc_by_level": {"3": 0.5},
                      "strategies": {k: {"share": v, "acc": 0.5, "count": 1} for k, v in shares[name, model].items()}}
            (study_dir / name / "eval" / f"{model}.json").write_text(json.dumps(result))
    cells = [{"name": n, "values": {"seed": int(n[-1]), "method": "mixed"}} for n in ("mixed-0", "mixed-1")]
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0, 1], "method": ["mixed"]},
                                                       "replicate_axis": "seed", "threshold": 0.8, "cells": cells}))
    text = study_report.write_study_report(study_dir).read_text()
    after_sft = text.split("Strategy of the greedy outputs after SFT")[1].split("\n\n")[1]
    after_rl = text.split("Strategy of the greedy outputs after RL")[1].split("\n\n")[1]
    assert after_sft == "- mixed (n=2): backward 50.0 +- 0.0, forward 37.5 +- 17.7, other 12.5 +- 17.7"
    assert after_rl.startswith("- mixed (n=2): forward 75.0 +- 35.4, backward 25.0 +- 35.4")
    methods = json.loads((study_dir / "summary.json").read_text())["methods"]["mixed"]
    assert methods["grpo_strategy/backward"]["values"] == [0.0, 0.5]


def test_study_report_gives_when_rl_narrowed_the_outputs_to_one_strategy(tmp_path):
    # the GRPO trainer's periodic eval logs eval/strategy/<name>; `other` (no primitive) is not a
    # strategy RL selects, so a cell whose outputs collapse to `other` never "selects"
    study_dir = tmp_path / "s"
    logged = {"mixed-0": [{"forward": 0.5, "backward": 0.5}, {"forward": 0.8, "other": 0.2}, {"forward": 0.95, "backward": 0.05}],
              "mixed-1": [{"backward": 0.6, "forward": 0.4}, {"other": 0.95, "forward": 0.05}, {"other": 0.95, "backward": 0.05}]}
    for name, shares in logged.items():
        _fake_cell(study_dir, name, 0.5, 0.6, [0.5, 0.6, 0.7])
        lines = [{"step": 10 * i, "eval/acc": 0.5, **{f"eval/strategy/{k}": v for k, v in share.items()}}
                 for i, share in enumerate(shares)]
        (study_dir / name / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    cells = [{"name": n, "values": {"seed": int(n[-1]), "method": "mixed"}} for n in logged]
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0, 1], "method": ["mixed"]},
                                                       "replicate_axis": "seed", "threshold": 0.8, "cells": cells}))
    text = study_report.write_study_report(study_dir).read_text()
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["selection"]["mixed-1"] == [[0, "backward", 0.6], [10, "forward", 0.05], [20, "backward", 0.05]]
    assert summary["cells"]["mixed-0"]["steps_to_one_strategy"] == 20 and "steps_to_one_strategy" not in summary["cells"]["mixed-1"]
    assert summary["methods"]["mixed"]["rl_top_strategy_last"]["values"] == [0.95, 0.05]
    section = text.split("## Selection during RL")[1]
    assert "| mixed | 55.0 +- 7.1" in section and "| 20 (n=1) (1 of 2) |" in section
    assert "- mixed-0: step 0 forward 50% -> step 10 forward 80% -> step 20 forward 95%" in section


def test_a_redistill_cells_compute_counts_its_teacher_also_when_taken_from_another_cell(tmp_path):
    study_dir = tmp_path / "s"
    _fake_cell(study_dir, "redistill-0", 0.5, 0.6, [0.5, 0.6])
    cell = study_dir / "redistill-0"
    run_lib.write_stage(cell / "grpo", {"hash": "g", "status": "done", "seconds": 10.0})
    run_lib.write_stage(cell / "teacher", {"hash": "t", "status": "done", "seconds": 2.0})  # linked in: 2 s
    for stage, seconds in (("data", 1.0), ("warm_start", 3.0), ("sft", 100.0), ("grpo", 50.0)):  # the source's records
        run_lib.write_stage(cell / "teacher" / stage, {"hash": stage, "status": "done", "seconds": seconds})
    (study_dir / "study.json").write_text(json.dumps({"axes": {"seed": [0]}, "replicate_axis": "seed", "threshold": 0.8,
                                                       "cells": [{"name": "redistill-0", "values": {"seed": 0}}]}))
    study_report.write_study_report(study_dir)
    assert json.loads((study_dir / "summary.json").read_text())["cells"]["redistill-0"]["seconds"] == 10.0 + 154.0


def test_study_report_leaves_out_results_of_an_earlier_config(tmp_path):
    """A cell rerun after the study file changed still holds the old run's evaluation until the
    rerun overwrites it (and a running cell holds part of its GRPO curve): neither may enter the
    figures. Only stages done under the cell's current config count."""
    path = write_study(tmp_path, {"seed": [0, 1]})
    study = load_study(path)
    for cell in study.cells:
        _fake_cell(study.study_dir, cell.name, 0.5, 0.9, [0.5, 0.9])
        hashes = run_lib.stage_hashes(config_from_dict(run_lib.RunConfig, cell.config))
        for stage in ("data", "warm_start", "sft", "grpo", "eval"):
            (cell.run_dir / stage).mkdir(exist_ok=True)
            run_lib.write_stage(cell.run_dir / stage, {"hash": hashes[stage], "status": "done", "seconds": 10.0})
    write_manifest(study)  # what `tailor-jax study` writes before running any cell, with each cell's stage hashes
    stale = study.cells[1].run_dir
    run_lib.write_stage(stale / "sft", {"hash": "0" * 16, "status": "done", "seconds": 10.0})  # an earlier sft.steps
    run_lib.write_stage(stale / "grpo", {"hash": "0" * 16, "status": "done", "seconds": 10.0})
    run_lib.write_stage(stale / "eval", {"hash": "0" * 16, "status": "done", "seconds": 10.0})
    path = study_report.write_study_report(study.study_dir)
    summary = json.loads((study.study_dir / "summary.json").read_text())
    assert summary["cells"]["seed-0"]["rl_acc"] == 0.9 and summary["cells"]["seed-0"]["seconds"] == 50.0
    assert summary["cells"]["seed-1"] == {}  # its data and warm start are current, but have no scalar results
    assert summary["methods"]["all"]["rl_acc"]["n"] == 1
    assert "| seed-1 | - | - | - | 0 | sft, grpo, eval |" in path.read_text()


# ---------------------------------------------------------------------------------------
# A micro study killed mid-cell.
def _grpo_checkpoints(run_dir: Path) -> list[int]:
    directory = run_dir / "grpo" / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _numbers(run_dir: Path) -> dict:
    """Everything a cell computed (metrics, evaluation, final weights), without timings and paths."""
    def strip(records):
        return [{k: v for k, v in r.items() if k != "time" and not k.startswith(("time/", "step_time")) and "per_s" not in k}
                for r in records]

    from tailor_jax.train.metrics import read_metrics

    return {
        "sft": strip(read_metrics(run_dir / "sft" / "metrics.jsonl")),
        "grpo": strip(read_metrics(run_dir / "grpo" / "metrics.jsonl")),
        "eval": {m: {k: v for k, v in json.loads((run_dir / "eval" / f"{m}.json").read_text()).items() if k not in ("model", "seconds")}
                 for m in ("sft", "grpo")},
        "weights": {m: (run_dir / m / "model" / "model.safetensors").read_bytes() for m in ("sft", "grpo")},
    }


def test_micro_study_killed_mid_cell_finishes_with_the_same_numbers(tmp_path):
    # Two cells that compute the same thing (`report` only decides whether a run writes its own
    # report.md): the second is killed in the middle of GRPO and rerun, the first ran uninterrupted.
    # Its cell processes compile the same programs: the later ones load them from the session's
    # compilation cache (tests/conftest.py).
    path = write_study(tmp_path, {"report": [False, True]})
    study_dir = tmp_path / "study"
    first, second = study_dir / "report-false", study_dir / "report-true"
    log = open(tmp_path / "log.txt", "a")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tailor_jax.cli", "study", str(path)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 600
    while not _grpo_checkpoints(second) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its running cell, as a machine dying would
    proc.wait()
    time.sleep(1)
    assert run_lib.read_stage(first / "eval")["status"] == "done"
    assert run_lib.read_stage(second / "grpo")["status"] == "running"  # the kill landed mid-cell
    assert 0 < _grpo_checkpoints(second)[-1] < MICRO_OVERRIDES["grpo.steps"]

    rerun = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = (tmp_path / "log.txt").read_text()
    assert rerun.returncode == 0, text[-3000:]
    assert "[1/2] report-false: done earlier" in text and "[2/2] report-true: resuming" in text
    assert "[4/6] grpo: resuming" in (second / "run.log").read_text()
    numbers = _numbers(first)
    assert numbers["weights"]["grpo"] != numbers["weights"]["sft"]  # GRPO trained: the weights can tell
    assert _numbers(second) == numbers
    summary = json.loads((study_dir / "summary.json").read_text())
    assert set(summary["cells"]) == {"report-false", "report-true"} and "rl_acc" in summary["cells"]["report-true"]


def _sample_record_path(pattern: str) -> str:
    """A file name that RECORD_GLOBS / TEACHER_GLOBS match: `*/metrics.jsonl` -> grpo/metrics.jsonl."""
    if pattern.endswith("/*"):
        return pattern[:-1] + "model.safetensors"
    return pattern.replace("*/", "grpo/").replace("*.", "grpo.")


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_committed_study_archives_are_not_gitignored():
    """Each study's archive_dir is meant to be committed; a record file that .gitignore drops
    (`*.jsonl` once dropped every cell's metrics.jsonl) would be missing after a clone, and a
    restored cell would lose its training curves without a word."""
    from tailor_jax.study_archive import RECORD_GLOBS, TEACHER_GLOBS

    checked = 0
    for study_file in sorted((REPO / "configs" / "studies").glob("*.yaml")):
        archive_dir = yaml.safe_load(study_file.read_text()).get("archive_dir")
        if not archive_dir:
            continue
        paths = [f"{archive_dir}/seed-0_cell/{_sample_record_path(p)}" for p in RECORD_GLOBS + TEACHER_GLOBS]
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *paths],
                                 capture_output=True, text=True)
        assert ignored.returncode == 1, f"{study_file.name}: .gitignore drops {ignored.stdout.split()}"
        checked += 1
    assert checked >= 2  # the KK and iGSM studies set archive_dir
