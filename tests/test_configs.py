"""Every config under configs/ loads, resolves into valid SFT/GRPO trainer configs, and
`tailor-jax run --dry-run` prints the resolved config and the plan without running anything."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from tailor_jax import run as run_lib
from tailor_jax.errors import TailorError

from checkpoint_stub import stub_checkpoint

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "kk-tiny", "igsm-tiny", "qwen2.5-0.5b-kk", "qwen2.5-1.5b-kk", "llama-3.2-1b-kk",
            "qwen2.5-0.5b-igsm", "gf-improve"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves_and_dry_runs(path, tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = [f"run_dir={run_dir}"]
    if yaml.safe_load(path.read_text()).get("pretrained"):  # the plan checks the checkpoint is there
        overrides.append(f"pretrained={stub_checkpoint(tmp_path / 'checkpoint', path)}")
    args = argparse.Namespace(config=str(path), overrides=overrides, dry_run=True)
    assert run_lib.run(args) == 0
    out = capsys.readouterr().out
    assert not run_dir.exists(), "a dry run must not write anything"
    resolved = yaml.safe_load(out[: out.index("plan for")])
    cfg = run_lib.load_run_config(path, overrides)
    assert resolved["run"]["task"] == cfg.task
    assert resolved["sft (resolved)"]["data"]["train_file"] == str(run_dir / "warm_start" / "sft.jsonl")
    assert resolved["sft (resolved)"]["steps"] >= 1
    stages = [line.split()[1] for line in out[out.index("plan for"):].splitlines()[1:]]
    assert stages == ["data", "warm_start", "sft"] + (["grpo"] if cfg.grpo is not None else []) + ["eval", "report"]
    assert all(" run " in line for line in out[out.index("plan for"):].splitlines()[1:])
    if cfg.grpo is not None:
        grpo = resolved["grpo (resolved)"]
        assert grpo["init"] == str(run_dir / "sft" / "model") and grpo["task"] == cfg.task


@pytest.mark.parametrize("path", [p for p in CONFIGS if yaml.safe_load(p.read_text()).get("pretrained")], ids=lambda p: p.stem)
@pytest.mark.parametrize("preset", ["single-device", "tpu-v4-8", "tpu-v5e-8"])
def test_pretrained_configs_fit_every_mesh_preset(path, preset, tmp_path):
    cfg = run_lib.load_run_config(path, [f"run_dir={tmp_path}", f"mesh_preset={preset}"])
    run_lib.check_batches(cfg)
    sft = run_lib.sft_config(cfg)
    assert sft.model.pretrained == cfg.pretrained and sft.tokenizer.path == cfg.pretrained
    assert sft.mesh.sizes() == [run_lib.MESH_PRESETS[preset][k] for k in ("data", "fsdp", "tensor")]


def test_quickstart_is_the_gf_sft_then_harder_grpo_recipe():
    cfg = run_lib.load_run_config(CONFIGS[0].parent / "quickstart.yaml")
    assert cfg.task == "gf" and cfg.task_options["p"] == 11
    assert cfg.data.train_options["steps"] == "2-5"
    assert cfg.warm_start.method == "tailor"  # the README's default is the Tailor warm start
    assert cfg.grpo["task_options"]["steps"] == "3-5"  # the longest SFT chains (docs/results.md)
    assert list(cfg.eval.levels) == [3, 4, 5]


def test_gf_improve_is_sft_on_short_then_grpo_on_longer_chains():
    cfg = run_lib.load_run_config(CONFIGS[0].parent / "gf-improve.yaml")
    assert cfg.task == "gf" and cfg.data.train_options["steps"] == "2-5"
    assert cfg.warm_start.method == "task_trace" and cfg.warm_start.strategy == "mixed"
    assert cfg.grpo["task_options"]["steps"] == "6-9" and cfg.task_options["tag_pool"] >= 9
    assert run_lib.sft_config(cfg).position_gaps.prob > 0
    assert {6, 7, 8, 9} <= set(cfg.eval.levels)


@pytest.mark.parametrize(
    "override, message",
    [
        ("sft.stepz=3", "unknown config key 'stepz'"),
        ("grpo.init=x", "grpo.init is set by `tailor-jax run`"),
        ("mesh_preset=tpu-v9", "mesh_preset must be one of"),
        ("eval.levels=[]", "eval.levels must list at least one"),
        ("warm_start.method=magic", "config key 'warm_start.method' must be one of"),
        ("sft.batch_size=12", "not a multiple of the 8-way data parallelism"),
    ],
)
def test_bad_configs_fail_with_one_line(override, message, tmp_path):
    overrides = [f"run_dir={tmp_path}", override]
    if override.startswith("sft.batch_size"):
        overrides.append("mesh_preset=tpu-v5e-8")
    with pytest.raises(TailorError) as err:
        run_lib.plan(run_lib.load_run_config(CONFIGS[0].parent / "quickstart.yaml", overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
