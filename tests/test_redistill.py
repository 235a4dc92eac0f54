"""`warm_start.method: redistill` in `tailor-jax run`: a resumable, stage-hashed `teacher` stage
(a rule_based run through GRPO) before the warm start, whose correct samples become the SFT set.
Training stages are faked here (in process); data and the teacher's warm start are real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailor_jax import run as run_lib
from tailor_jax.data.jsonl import read_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.tailor import baselines
from tailor_jax.tailor.metrics import Example

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def redistill_config(tmp_path: Path, *overrides: str) -> run_lib.RunConfig:
    return run_lib.load_run_config(QUICKSTART, [f"run_dir={tmp_path / 'run'}", "data.num_train=20", "data.num_sft_eval=4",
                                                "warm_start={method: redistill}", *overrides])


@pytest.fixture
def fake_training(monkeypatch):
    calls: list[str] = []

    def fake(name):
        def stage(cfg, out):
            calls.append(f"{Path(cfg.run_dir).name}/{name}")
            if name == "grpo":  # the exported policy, which the teacher's samples come from
                (out / "model").mkdir(parents=True, exist_ok=True)
                (out / "model" / "weights").write_text(f"trained in {cfg.run_dir}")
            return f"{name} ok"
        return stage

    monkeypatch.setitem(run_lib.STAGE_FUNCTIONS, "sft", fake("sft"))
    monkeypatch.setitem(run_lib.STAGE_FUNCTIONS, "grpo", fake("grpo"))
    monkeypatch.setitem(run_lib.STAGE_FUNCTIONS, "eval", fake("eval"))
    monkeypatch.setitem(run_lib.STAGE_FUNCTIONS, "report", fake("report"))
    sampled: list[dict] = []

    def fake_redistill(task, records, budget, policy_dir, on_progress, **options):
        sampled.append({"policy_dir": str(policy_dir), "budget": budget, "records": len(records), **options})
        for done in range(1, len(records) + 1):  # the sampling's progress, a prompt at a time
            on_progress(done, len(records), done // 2)
        # the "teacher" solves every other prompt
        return [Example(r, task.target(r), "redistill") for r in records[::2]]

    monkeypatch.setattr(baselines, "redistill", fake_redistill)
    return calls, sampled


def test_redistill_trains_its_teacher_then_samples_it(tmp_path, fake_training, capsys):
    calls, sampled = fake_training
    cfg = redistill_config(tmp_path, "seed=3")
    assert [s.name for s in run_lib.plan(cfg)] == ["data", "teacher", "warm_start", "sft", "grpo", "eval", "report"]
    run_lib.execute(cfg, log=lambda message: None)
    # the teacher: a rule_based run (own data, warm start), trained through GRPO, not evaluated
    assert calls == ["teacher/sft", "teacher/grpo", "run/sft", "run/grpo", "run/eval", "run/report"]
    teacher = tmp_path / "run" / "teacher"
    assert {p.parent.name for p in teacher.glob("*/stage.json")} == {"data", "warm_start", "sft", "grpo"}
    assert {r["primitive"] for r in read_jsonl(teacher / "warm_start" / "sft.jsonl")} == {"solution_trace"}
    assert list(read_jsonl(teacher / "data" / "train.jsonl")) == list(read_jsonl(tmp_path / "run" / "data" / "train.jsonl"))
    # its samples on the run's SFT prompts, up to one per prompt, are the warm start
    assert sampled == [{"policy_dir": str(teacher / "grpo" / "model"), "budget": 20, "records": 20, "samples_per_question": 1,
                        "max_new_tokens": cfg.eval.max_new_tokens, "seed": cfg.warm_start.options["seed"], "prompt_style": "plain"}]
    demos = list(read_jsonl(tmp_path / "run" / "warm_start" / "sft.jsonl"))
    assert len(demos) == 10 and {d["primitive"] for d in demos} == {"redistill"}
    stats = json.loads((tmp_path / "run" / "warm_start" / "stats.json").read_text())
    assert stats["num_demos"] == 10
    lines = [line for line in capsys.readouterr().err.splitlines() if "redistill sampled" in line]
    assert len(lines) == 10 and lines[-1].endswith("sampled 20 of 20 SFT prompts, the teacher solved 10 (50.0%)"), lines

    calls.clear()  # rerun: everything done is skipped, the teacher included
    assert [s.status for s in run_lib.plan(cfg)][:6] == ["done"] * 6
    run_lib.execute(cfg, log=lambda message: None)
    assert calls == ["run/report"] and len(sampled) == 1


def test_teacher_in_the_hash_chain(tmp_path):
    base = run_lib.stage_hashes(redistill_config(tmp_path))
    assert list(base) == ["data", "teacher", "warm_start", "sft", "grpo", "eval"]
    longer_rl = run_lib.stage_hashes(redistill_config(tmp_path, "grpo.steps=41"))
    # the teacher's RL uses the run's grpo recipe: its samples (the warm start) change too
    assert [base[s] == longer_rl[s] for s in base] == [True, False, False, False, False, False]
    more_samples = run_lib.stage_hashes(redistill_config(tmp_path, "warm_start.options={samples_per_question: 2}"))
    assert [base[s] == more_samples[s] for s in base] == [True, True, False, False, False, False]
    rule_based = run_lib.stage_hashes(redistill_config(tmp_path, "warm_start={method: rule_based}"))
    assert "teacher" not in rule_based


def test_the_teacher_is_taken_from_a_finished_rule_based_run_of_the_same_config(tmp_path, fake_training):
    calls, sampled = fake_training
    other = run_lib.load_run_config(QUICKSTART, [f"run_dir={tmp_path / 'other'}", "data.num_train=20", "data.num_sft_eval=4",
                                                 "warm_start={method: rule_based}", "seed=3", "grpo.steps=41"])
    rule_based = run_lib.load_run_config(QUICKSTART, [f"run_dir={tmp_path / 'rule_based'}", "data.num_train=20",
                                                      "data.num_sft_eval=4", "warm_start={method: rule_based}", "seed=3"])
    for cfg in (other, rule_based):
        run_lib.execute(cfg, log=lambda message: None)
    (tmp_path / "rule_based" / "sft" / ".lock").touch()  # as the SFT trainer leaves it
    calls.clear()
    cfg = redistill_config(tmp_path, "seed=3", f"teacher_from=[{tmp_path / 'missing'}, {other.run_dir}, {rule_based.run_dir}]")
    run_lib.execute(cfg, log=lambda message: None)
    # no teacher training: the rule_based run with the same hashes is the teacher (the other one
    # RL-trained longer, and the missing one, are passed over)
    assert calls == ["run/sft", "run/grpo", "run/eval", "run/report"]
    teacher = tmp_path / "run" / "teacher"
    assert (teacher / "grpo" / "model" / "weights").samefile(tmp_path / "rule_based" / "grpo" / "model" / "weights")
    assert sampled[-1]["policy_dir"] == str(teacher / "grpo" / "model")
    assert not list(teacher.glob("*.tmp")) and not list(teacher.glob("*/.lock"))
    assert [s.status for s in run_lib.plan(cfg)][:6] == ["done"] * 6

    calls.clear()  # without a matching run it trains its own, as before
    alone = redistill_config(tmp_path, "run_dir=" + str(tmp_path / "alone"), "seed=3", f"teacher_from=[{other.run_dir}]")
    run_lib.execute(alone, log=lambda message: None)
    assert calls[:2] == ["teacher/sft", "teacher/grpo"]


@pytest.mark.parametrize("override, message", [
    ("warm_start={method: redistill, options: {curate: {}}}", r"warm_start.options \['curate'\] do not apply to redistill"),
    ("grpo=null", "redistill RL-trains its teacher with the grpo section"),
    (("warm_start={method: rule_based}", "teacher_from=[runs/x]"), "teacher_from applies to warm_start.method redistill only"),
])
def test_bad_redistill_configs_fail_at_load(tmp_path, override, message):
    with pytest.raises(TailorError, match=message):
        redistill_config(tmp_path, *(override if isinstance(override, tuple) else (override,)))


def test_a_teacher_that_solves_nothing_is_one_clear_error(tmp_path, fake_training, monkeypatch):
    monkeypatch.setattr(baselines, "redistill", lambda *args, **kwargs: [])
    with pytest.raises(TailorError, match="redistill: the teacher .* solved none of the 20 SFT prompts"):
        run_lib.execute(redistill_config(tmp_path), log=lambda message: None)
