"""Config machinery: YAML + overrides, typed validation with one-line errors, hash, dump."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailor_jax.config import (
    CheckpointConfig,
    OptimizerConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_dict,
    dump_config,
    load_config,
    require,
)
from tailor_jax.errors import TailorError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    levels: tuple[int, ...] = (3, 7)
    window: tuple[int, float] = (2, 0.5)
    files: list[str] = dataclasses.field(default_factory=list)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    task: Literal["kk", "igsm", "gf"] = "kk"
    max_len: int | None = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    steps: int = 10
    seed: int = 0
    shuffle: bool = True
    optimizer: OptimizerConfig = OptimizerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    data: DataConfig = DataConfig()
    extra: DataConfig | None = None

    def __post_init__(self):
        require(self.steps >= 0, f"steps must be >= 0, got {self.steps}")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(TailorError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_yaml_plus_overrides(tmp_path):
    path = write(
        tmp_path,
        "name: run1\nsteps: 5\noptimizer:\n  lr: 3e-4\n  schedule: cosine\n  grad_clip: null\n"
        "data:\n  levels: [3, 4, 5]\n  weights: {kk: 1, gf: 0.5}\n",
    )
    cfg = load_config(
        ExperimentConfig, path,
        ["optimizer.warmup_steps=7", "data.task=gf", "data.window=[4, 1]", "extra.max_len=128", "optimizer.b2=0.95"],
    )
    assert cfg.name == "run1" and cfg.steps == 5 and cfg.shuffle is True
    assert cfg.optimizer.lr == 3e-4 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.schedule == "cosine" and cfg.optimizer.grad_clip is None and cfg.optimizer.warmup_steps == 7
    assert cfg.optimizer.b2 == 0.95
    assert cfg.data.levels == (3, 4, 5) and cfg.data.task == "gf" and cfg.data.window == (4, 1.0)
    assert isinstance(cfg.data.window[1], float), "ints are accepted for floats (and converted)"
    assert cfg.data.weights == {"kk": 1.0, "gf": 0.5}
    assert cfg.extra == DataConfig(max_len=128)
    assert cfg.checkpoint == CheckpointConfig()


def test_overrides_without_file_and_later_override_wins():
    cfg = load_config(ExperimentConfig, None, ["name=x", "steps=3", "steps=4", "data.files=[a.jsonl, b.jsonl]"])
    assert cfg.steps == 4 and cfg.data.files == ["a.jsonl", "b.jsonl"]
    assert load_config(ExperimentConfig, None, ["name=x", "extra=null"]).extra is None


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["name=x", "optimizer.lrr=1e-3"], "unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?)"),
        (["name=x", "step=3"], "unknown config key 'step' (did you mean 'steps'?)"),
        (["name=x", "zzz=1"], "unknown config key 'zzz'; known keys here: name, steps"),
        (["name=x", "steps=1.5"], "config key 'steps' must be int, got 1.5 (float)"),
        (["name=x", "steps=true"], "config key 'steps' must be int, got True (bool)"),
        (["name=x", "shuffle=1"], "config key 'shuffle' must be bool, got 1 (int)"),
        (["name=x", "optimizer.lr=fast"], "config key 'optimizer.lr' must be float, got 'fast' (str)"),
        (["name=3"], "config key 'name' must be str, got 3 (int)"),
        (["name=x", "data.task=math"], "config key 'data.task' must be one of 'kk', 'igsm', 'gf', got 'math'"),
        (["name=x", "data.levels=3"], "config key 'data.levels' must be a list, got 3 (int)"),
        (["name=x", "data.levels=[1, a]"], "config key 'data.levels[1]' must be int, got 'a' (str)"),
        (["name=x", "data.window=[1]"], "config key 'data.window' must be a list of 2 items, got 1"),
        (["name=x", "data.max_len=abc"], "config key 'data.max_len' must be int, got 'abc' (str)"),
        (["name=x", "optimizer=3"], "config key 'optimizer' is a section (OptimizerConfig)"),
        (["name=x", "data.weights=[1]"], "config key 'data.weights' must be a mapping"),
        (["steps=2"], "config key 'name' is required; set it in the YAML file or as name=VALUE"),
        (["name=x", "optimizer.lr=-1e-3"], "config section 'optimizer': lr must be > 0, got -0.001"),
        (["name=x", "steps=-1"], "config ExperimentConfig: steps must be >= 0, got -1"),
        (["name=x", "checkpoint.keep_best=2"], "config section 'checkpoint': keep_best > 0 needs best_metric"),
        (["name=x", "checkpoint.every_steps=0"], "every_steps must be >= 1"),
        (["name=x", "optimizer.b1=1.0"], "b1 must be in [0, 1)"),
        (["name=x", "optimizer.lr.peak=1"], "config key 'optimizer.lr' must be float"),
        (["name=x", "steps"], "override 'steps' is not of the form key=value"),
        (["name=x", "optimizer..lr=1"], "has an empty part"),
        (["name=x", "steps=1", "steps.x=2"], "override 'steps.x': 'steps' is a value, not a section"),
        (["name=x", "data.levels=[1, 2"], "invalid YAML"),
    ],
)
def test_one_line_errors(overrides, expected):
    assert expected in error_of(load_config, ExperimentConfig, None, overrides)


def test_file_errors(tmp_path):
    assert "does not exist" in error_of(load_config, ExperimentConfig, tmp_path / "missing.yaml")
    bad = write(tmp_path, "name: x\noptimizer:\n  lr: 1\n   b1: 0.9\n")
    message = error_of(load_config, ExperimentConfig, bad)
    assert message.startswith(f"{bad}:4: invalid YAML")
    assert "must be a YAML mapping" in error_of(load_config, ExperimentConfig, write(tmp_path, "- 1\n- 2\n"))
    assert load_config(ExperimentConfig, write(tmp_path, ""), ["name=y"]).name == "y"


def test_dump_roundtrip_and_hash(tmp_path):
    cfg = load_config(ExperimentConfig, None, ["name=x", "optimizer.lr=1e-5", "data.levels=[2,9]", "extra.task=gf"])
    path = dump_config(cfg, tmp_path / "sub" / "resolved.yaml")
    assert load_config(ExperimentConfig, path) == cfg
    assert config_to_dict(cfg)["data"]["levels"] == [2, 9]
    same = config_from_dict(ExperimentConfig, {"data": {"levels": [2, 9]}, "extra": {"task": "gf"},
                                               "optimizer": {"lr": 1e-5}, "name": "x"})
    assert config_hash(same) == config_hash(cfg) and len(config_hash(cfg)) == 16
    assert config_hash(cfg.optimizer) != config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, seed=1)) != config_hash(cfg)
    assert config_hash(cfg.optimizer) == config_hash(OptimizerConfig(lr=1e-5))


def test_hash_is_stable_across_processes():
    code = (
        "from tailor_jax.config import OptimizerConfig, config_hash;"
        "print(config_hash(OptimizerConfig(lr=3e-4, schedule='cosine')))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONHASHSEED=seed)).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {config_hash(OptimizerConfig(lr=3e-4, schedule="cosine"))}


def test_apply_overrides_does_not_mutate_input():
    data = {"optimizer": {"lr": 1.0}}
    result = apply_overrides(data, ["optimizer.lr=2", "data.levels=[1]"])
    assert data == {"optimizer": {"lr": 1.0}} and result == {"optimizer": {"lr": 2}, "data": {"levels": [1]}}


@settings(max_examples=40, deadline=None)
@given(
    lr=st.floats(min_value=1e-12, max_value=10.0, allow_nan=False),
    warmup=st.integers(min_value=0, max_value=10**6),
    clip=st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1e3)),
    schedule=st.sampled_from(["constant", "cosine", "linear"]),
)
def test_optimizer_config_roundtrips_through_yaml(tmp_path_factory, lr, warmup, clip, schedule):
    cfg = OptimizerConfig(lr=lr, warmup_steps=warmup, grad_clip=clip, schedule=schedule)
    path = dump_config(cfg, tmp_path_factory.mktemp("dump") / "opt.yaml")
    assert load_config(OptimizerConfig, path) == cfg
    overrides = [f"lr={lr!r}", f"warmup_steps={warmup}", f"grad_clip={'null' if clip is None else repr(clip)}",
                 f"schedule={schedule}"]
    assert load_config(OptimizerConfig, None, overrides) == cfg
