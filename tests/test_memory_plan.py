"""The memory plan (train.memory_plan): compiled estimates before anything runs, and
`tailor-jax run --dry-run` stopping with one line when a stage cannot fit the stated device memory."""

from __future__ import annotations

import pytest
import yaml

from tailor_jax.cli import main
from tailor_jax.model import get_preset
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.train import memory_plan as mp

# A one-layer model; SFT at 2 x 128 tokens, GRPO 4 rows x (16 + 16).
CONFIG = {
    "task": "gf", "task_options": {"p": 11}, "mesh_preset": "single-device",
    "data": {"num_train": 8, "num_sft_eval": 2},
    "sft": {"steps": 2, "batch_size": 2, "tokenizer": {"vocab_size": 300}, "data": {"seq_len": 128},
            "model": {"preset": "tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
                                                      "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}}},
    "grpo": {"steps": 1, "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 16}},
    "eval": {"levels": [3], "per_level": 2, "max_new_tokens": 16},
}


def test_too_large_for_the_stated_device_fails_at_dry_run_with_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "run_dir": str(tmp_path / "run")}))
    # 2 KiB: the SFT step alone needs more
    assert main(["run", str(config), "--dry-run", "device_memory_gib=0.000002"]) == 2
    captured = capsys.readouterr()
    error = [line for line in captured.err.splitlines() if "error" in line]
    assert len(error) == 1 and captured.err.endswith(error[0] + "\n"), error
    assert error[0].startswith("tailor-jax run: error: sft: sft step (2x128) needs about")
    assert "more than the 0.0 GiB available; lower sft.batch_size / sft.accum_steps" in error[0]
    assert "logprob_chunk" in error[0] and "remat" in error[0]
    assert "memory plan (XLA compiled memory analysis" in captured.err
    assert not (tmp_path / "run").exists(), "nothing ran"


@pytest.mark.slow
def test_dry_run_with_room_prints_every_stage(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "run_dir": str(tmp_path / "run")}))
    assert main(["run", str(config), "--dry-run", "device_memory_gib=64"]) == 0
    out = capsys.readouterr().err
    # 4 rows a step, one micro-batch: the update's only program is the first micro-batch's
    for stage in ("sft: sft step", "grpo: sampler", "grpo: grpo micro-batch gradient"):
        assert stage in out
    assert not (tmp_path / "run").exists()


def test_estimates_grow_with_the_batch_and_shrink_with_the_logprob_chunk():
    config = get_preset("tiny").replace(vocab_size=4096, num_layers=1)
    mesh = create_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    model = mp.AbstractModel.build(config, mesh)
    small = mp.sft_step(model, 2, 256, logprob_chunk=64)
    large_chunk = mp.sft_step(model, 2, 256, logprob_chunk=512)
    params = config.num_params() * 4  # float32
    assert small.params == params and small.optimizer >= 2 * params  # AdamW: two moments
    # one [2, 256, 4096] float32 logits array is 8 MiB; chunks of 64 tokens are 1 MiB
    assert small.temporaries < large_chunk.temporaries
    assert large_chunk.temporaries - small.temporaries > 3 * 2**20


def test_grpo_gradient_alone_leaves_out_the_accumulated_tree():
    """`accumulate=False` (benchmarks/memory.py --stages grpograd) compiles the gradient with its
    gradients as outputs; the trainer's accumulate program holds one more gradient tree."""
    config = get_preset("tiny").replace(vocab_size=4096, num_layers=1)
    model = mp.AbstractModel.build(config, create_mesh(MeshConfig(data=1, fsdp=1, tensor=1)))
    accumulated = mp.grpo_update(model, 4, 16, 64, group=2)
    alone = mp.grpo_update(model, 4, 16, 64, group=2, accumulate=False)
    assert (accumulated.stage, alone.stage) == ("grpo update micro-batch", "grpo micro-batch gradient")
    assert alone.aliased == 0 and alone.outputs >= alone.params  # the gradients are its outputs
    assert accumulated.aliased >= accumulated.params  # the accumulator is donated
    assert alone.temporaries < accumulated.temporaries


def test_grpo_plan_accumulates_only_when_an_update_has_several_micro_batches():
    from tailor_jax.config import load_config
    from tailor_jax.train.grpo import GRPOConfig

    config = get_preset("tiny").replace(vocab_size=4096, num_layers=1)
    mesh = create_mesh(MeshConfig(data=1, fsdp=1, tensor=1))

    def plan(*overrides):
        cfg = load_config(GRPOConfig, None, ["run_dir=unused", "init=unused", "rollout.prompts_per_step=2",
                                             "rollout.num_generations=2", "rollout.max_new_tokens=16", *overrides])
        [update] = mp.grpo_plan(cfg, config, mesh, None, prompt_len=16, programs=("update",))
        return update

    one, several = plan(), plan("dash.micro_batch_size=2")
    assert (one.stage, one.shape) == ("grpo micro-batch gradient", "4x(16+16)")
    assert (several.stage, several.shape) == ("grpo update micro-batch", "2x(16+16)")
    assert one.aliased == 0 and several.aliased >= several.params  # no accumulator / a donated one


def test_memory_keys_leave_the_stage_hashes(tmp_path):
    from tailor_jax import run as run_lib

    base = run_lib.load_run_config("configs/quickstart.yaml", [f"run_dir={tmp_path}"])
    tuned = run_lib.load_run_config("configs/quickstart.yaml", [
        f"run_dir={tmp_path}", "device_memory_gib=40", "sft.memory.logprob_chunk=256", "grpo.memory.logprob_chunk=128"])
    assert run_lib.grpo_config(tuned).memory.device_memory_gib == 40
    assert run_lib.sft_config(tuned).memory.logprob_chunk == 256
    assert run_lib.stage_hashes(tuned) == run_lib.stage_hashes(base)


def test_extrapolate_is_exact_on_lines_and_flags_points_off_them():
    line = [(10 + 3 * n, 7 * n, 0, 100 + 20 * n) for n in (1, 2, 3)]
    fit = mp.extrapolate((1, 2, 3), line, 28)
    assert fit.figures == (94, 196, 0, 660) and fit.error == 0.0
    # the 1-layer point off the 2-3 line: flagged; the line through 2 and 3 layers (20 per layer) is used
    bent = [(0, 0, 0, 100), (0, 0, 0, 160), (0, 0, 0, 180)]
    fit = mp.extrapolate((1, 2, 3), bent, 5)
    assert fit.figures[3] == 180 + 2 * 20 and fit.error == pytest.approx(40 / 180)


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_extrapolated_estimate_matches_the_full_compile(stage):
    # 6 layers: the estimate compiles 1, 2, 3 layers and extrapolates; exact compiles all 6
    config = get_preset("tiny").replace(vocab_size=1024, num_layers=6, remat="full")
    mesh = create_mesh(MeshConfig(data=1, fsdp=1, tensor=1))

    def estimate(exact):
        model = mp.AbstractModel.build(config, mesh, exact=exact)
        if stage == "sft":
            return mp.sft_step(model, 2, 128)
        return mp.grpo_update(model, 8, 16, 256, group=2)

    exact, fitted = estimate(True), estimate(False)
    assert exact.method == "compiled" and fitted.method == "extrapolated from 1,2,3 layers"
    assert fitted.fit_error <= mp.FIT_TOLERANCE, fitted.fit_points
    assert (fitted.params, fitted.optimizer, fitted.resident) == (exact.params, exact.optimizer, exact.resident)
    for name in ("arguments", "outputs", "aliased"):  # the parameters' and optimizer's buffers: exactly linear
        assert getattr(fitted, name) == getattr(exact, name), name
    three_layers = dict(fitted.fit_points)[3][3]
    assert exact.temporaries > three_layers  # the layers' share is there to be extrapolated
    assert abs(fitted.temporaries - exact.temporaries) <= 0.05 * exact.temporaries, (fitted, exact)
