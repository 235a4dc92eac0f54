"""GRPO loop: row layout, DASH filtering and packing, accumulation == plain GRPO, end-to-end
run with evaluation, exact resume after SIGKILL, and config errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tailor_jax.config import load_config
from tailor_jax.errors import TailorError
from tailor_jax.train import grpo as gt
from tailor_jax.model.logprobs import logprobs_from_logits as token_logprobs
from tailor_jax.train.grpo import grpo_loss
from tailor_jax.train.optim import make_optimizer
from tailor_jax.train.state import create_train_state

from grpo_toy import make_tiny_init

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-shaped model + a BPE tokenizer trained on GF text, in HF format."""
    return make_tiny_init(tmp_path_factory.mktemp("init"))


def base_overrides(init_dir: Path, run_dir: Path) -> list[str]:
    return [
        f"run_dir={run_dir}", f"init={init_dir}", "task=gf", "task_options={steps: '1-2', p: 11}",
        "rollout.prompts_per_step=4", "rollout.num_generations=4", "rollout.max_new_tokens=16",
        "optimizer.lr=0.001", "steps=3", "progress=false", "checkpoint.async_save=false", "checkpoint.every_steps=1",
    ]


# --- pure pieces -----------------------------------------------------------------------------
def test_build_rows_layout():
    rows = gt.build_rows([[5, 6, 7], [8], [5, 6, 7]], np.array([[1, 2, 0], [3, 0, 0], [4, 4, 4]]), np.array([2, 1, 3]), pad_id=0)
    p = rows["prompt_tokens"].shape[1]
    assert rows["prompt_tokens"].shape == (2, p)  # the repeated prompt is stored once
    assert rows["row_prompt"].tolist() == [0, 1, 0]
    assert rows["prompt_tokens"][0, p - 3 :].tolist() == [5, 6, 7] and rows["prompt_tokens"][1, p - 1] == 8
    assert not rows["prompt_mask"][1, : p - 1].any() and rows["prompt_mask"][0, p - 3 :].all()
    assert rows["prompt_positions"][0, p - 3 :].tolist() == [0, 1, 2]
    assert rows["tokens"][0].tolist() == [1, 2, 0]
    assert rows["completion_mask"].tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    assert rows["positions"][0].tolist() == [3, 4, 5] and rows["positions"][1].tolist() == [1, 2, 3]


def test_micro_batches_carry_the_prompts_their_rows_read():
    rows = gt.build_rows([[5], [5], [6, 7], [6, 7], [9], [9]], np.arange(12).reshape(6, 2), np.full(6, 2), pad_id=0)
    rows["advantages"] = np.arange(6, dtype=np.float32)
    first, second = gt.pack_micro_batches(rows, np.array([0, 2, 3, 5]), micro=2, prompt_slots=2)
    assert first["tokens"].tolist() == [[0, 1], [4, 5]]
    assert first["prompt_tokens"][first["row_prompt"], -1].tolist() == [5, 7]
    assert second["prompt_tokens"][second["row_prompt"], -1].tolist() == [7, 9]
    one = gt.pack_micro_batches(rows, np.array([0, 1]), micro=2, prompt_slots=2)[0]
    assert one["row_prompt"].tolist() == [0, 0] and not one["prompt_mask"][1].any()  # unused slot is padding
    with pytest.raises(TailorError, match="prompt slots"):
        gt.pack_micro_batches(rows, np.array([0, 2, 4]), micro=3, prompt_slots=2)



def test_prompt_slots_default_to_what_the_micro_batches_read():
    # 5 groups of 2 rows: whole groups per micro-batch read 1 prompt each, not min(micro, 5).
    rows = gt.build_rows([[p] for p in (5, 5, 6, 6, 7, 7, 8, 8, 9, 9)], np.arange(20).reshape(10, 2), np.full(10, 2), pad_id=0)
    rows["advantages"] = np.ones(10, np.float32)

    def slots(index, micro, **kw):
        return {len(b["prompt_tokens"]) for b in gt.pack_micro_batches(rows, np.array(index), micro, **kw)}

    assert slots(range(10), micro=2) == {1}
    assert slots(range(10), micro=4) == {2}
    assert slots([0, 2, 4, 5], micro=4) == {4}  # reads 3 prompts: rounded up to a power of two
    assert slots([0, 2, 4, 6, 8, 9], micro=6) == {5}  # at most min(micro, prompts)
    assert slots(range(10), micro=2, slot_multiple=2) == {2}  # a multiple of the data parallelism
def test_micro_batches_are_cut_to_their_longest_completion():
    lengths = np.array([3, 1, 9, 2, 20, 5, 2, 2])
    rows = gt.build_rows([[5]] * 8, np.arange(8 * 24).reshape(8, 24), lengths, pad_id=0)
    rows["advantages"] = np.ones(8, np.float32)
    rows["old_logp"] = rows["sampler_logp"] = np.zeros((8, 24), np.float32)
    order = gt.order_by_group_length(np.arange(8), lengths, group=2)
    assert order.tolist() == [6, 7, 0, 1, 2, 3, 4, 5]  # groups by their longest row: 2, 3, 9, 20
    batches = gt.pack_micro_batches(rows, order, micro=2, min_width=4)
    assert [b["tokens"].shape[1] for b in batches] == [4, 4, 16, 24]  # power of two, at most the full 24
    for b, pair in zip(batches, order.reshape(4, 2)):
        assert all(b[k].shape == (2, b["tokens"].shape[1]) for k in gt.TIME_KEYS)
        assert b["tokens"].tolist() == rows["tokens"][pair, : b["tokens"].shape[1]].tolist()
        assert b["completion_mask"].sum() == lengths[pair].sum()  # nothing real was cut
    assert gt.order_by_group_length(np.array([1, 4, 5]), lengths, 2).tolist() == [1, 4, 5]  # groups stay whole
    assert [b["tokens"].shape[1] for b in gt.pack_micro_batches(rows, np.arange(8), micro=8)] == [24]


def test_filtering_drops_small_advantages_and_shrinks_the_update():
    adv = np.array([0.0, 0.05, -0.5, 0.0, 1.2, -0.09, 0.3, 0.0])
    keep = gt.select_rows(adv, tau=0.1, enabled=True)
    assert keep.tolist() == [2, 4, 6]
    assert gt.select_rows(np.zeros(4), 0.1, True).tolist() == [0]  # at least one row survives
    assert gt.select_rows(adv, 0.1, enabled=False).tolist() == list(range(8))
    rows = {"x": np.arange(8)[:, None].repeat(3, 1), "completion_mask": np.ones((8, 3), np.float32),
            "advantages": adv.astype(np.float32)}
    batches = gt.pack_micro_batches(rows, keep, micro=2)
    assert len(batches) == 2 and sum(b["x"].shape[0] for b in batches) == 4  # 3 real rows + 1 filler
    assert batches[0]["x"][:, 0].tolist() == [2, 4]
    assert batches[1]["completion_mask"][1].sum() == 0 and batches[1]["advantages"][1] == 0
    assert len(gt.pack_micro_batches(rows, gt.select_rows(adv, 0.1, False), micro=2)) == 4


def test_curriculum_and_prompts_are_pure_in_step(init_dir, tmp_path):
    cfg = load_config(gt.GRPOConfig, None, [*base_overrides(init_dir, tmp_path),
                      "curriculum=[{start_step: 3, task_options: {steps: '4-5'}}]"])
    assert gt.task_options_at(cfg, 2)["steps"] == "1-2" and gt.task_options_at(cfg, 3)["steps"] == "4-5"
    assert gt.step_records(cfg, 3, 0, None) == gt.step_records(cfg, 3, 0, None)
    assert gt.step_records(cfg, 3, 0, None) != gt.step_records(cfg, 4, 0, None)
    # the chain length k of every prompt follows the curriculum: 1-2 before step 3, 4-5 from it
    assert {r["k"] for r in gt.step_records(cfg, 3, 0, None) + gt.step_records(cfg, 4, 0, None)} <= {4, 5}
    assert {r["k"] for r in gt.step_records(cfg, 2, 0, None) + gt.step_records(cfg, 1, 0, None)} <= {1, 2}
    assert len(gt.step_records(cfg, 3, 0, None)) == 4


# --- accumulation equals plain GRPO ---------------------------------------------------------
@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_micro_batch_accumulation_equals_one_batch(init_dir, loss_agg):
    from tailor_jax.model import load_pretrained
    from tailor_jax.parallel.mesh import MeshConfig, create_mesh

    mesh = create_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1])
    model = load_pretrained(init_dir, dtype="float32")
    tx = make_optimizer(load_config(gt.GRPOConfig, None, [f"run_dir=x", f"init={init_dir}"]).optimizer, 10)
    graphdef, state = create_train_state(model, tx, 0, mesh)
    rng = np.random.default_rng(0)
    n, c = 8, 6
    prompts = [list(rng.integers(3, 100, size=rng.integers(2, 6))) for _ in range(n)]
    rows = gt.build_rows(prompts, rng.integers(3, 100, size=(n, c)), rng.integers(1, c + 1, size=n), pad_id=0)
    rows["advantages"] = rng.normal(size=n).astype(np.float32)
    logp_fn = jax.jit(gt.make_logp_fn(graphdef, 1.0))
    old = np.asarray(logp_fn(state.params, state.rest, {k: jnp.asarray(v) for k, v in rows.items()}))
    # the shared-prompt forward gives the log-probs of each row run whole: prompt | completion
    full = jnp.concatenate([rows["prompt_tokens"][rows["row_prompt"]], rows["tokens"]], axis=1)
    full_mask = np.concatenate([rows["prompt_mask"][rows["row_prompt"]], rows["completion_mask"] > 0], axis=1)
    full_positions = np.concatenate([rows["prompt_positions"][rows["row_prompt"]], rows["positions"]], axis=1)
    p = rows["prompt_tokens"].shape[1]
    logits, _ = model(full, jnp.asarray(full_positions), attention_mask=jnp.asarray(full_mask))
    whole_rows = token_logprobs(logits[:, p - 1 : -1], rows["tokens"])
    np.testing.assert_allclose(old[rows["completion_mask"] > 0], np.asarray(whole_rows)[rows["completion_mask"] > 0], atol=1e-5)
    rows["old_logp"] = rows["sampler_logp"] = (old + rng.normal(scale=0.05, size=old.shape)).astype(np.float32)
    loss_cfg = gt.LossConfig(loss_agg=loss_agg, epsilon_low=0.1, epsilon_high=0.3)
    acc = jax.jit(gt.make_accumulate_fn(graphdef, loss_cfg, 1.0, c))
    zeros = jax.tree.map(jnp.zeros_like, state.params)

    whole, _ = acc(zeros, state.params, state.rest, {k: jnp.asarray(v) for k, v in rows.items()}, jnp.float32(1.0))
    grads = zeros
    total_tokens = rows["completion_mask"].sum()
    lengths = rows["completion_mask"].sum(axis=1).astype(int)
    # ordered by length and cut to their longest completion (min_width 1 so that they are cut here)
    batches = gt.pack_micro_batches(rows, gt.order_by_group_length(np.arange(n), lengths, 2), micro=2, min_width=1)
    assert min(b["tokens"].shape[1] for b in batches) < c
    for b in batches:
        w = b["completion_mask"].sum() / total_tokens if loss_agg == "token_mean" else 2 / n
        grads, _ = acc(grads, state.params, state.rest, {k: jnp.asarray(v) for k, v in b.items()}, jnp.float32(w))
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)

    # and the accumulated gradient is the gradient of grpo_loss on the whole batch
    def direct(params):
        # untiled: the full [N, C, V] logits and a plain log-softmax
        model = nnx.merge(graphdef, params, state.rest)
        hidden = gt.update._completion_hidden(model, {k: jnp.asarray(v) for k, v in rows.items()})
        logp = token_logprobs(model.logits(hidden), jnp.asarray(rows["tokens"]))
        return grpo_loss(logp, rows["old_logp"], None, rows["advantages"], rows["completion_mask"],
                         epsilon_low=0.1, epsilon_high=0.3, loss_agg=loss_agg, max_len=c)[0]

    expected = jax.grad(direct)(state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(whole)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


# --- end to end ----------------------------------------------------------------------------
def test_run_logs_metrics_filters_and_evaluates(init_dir, tmp_path):
    cfg = load_config(gt.GRPOConfig, None, [
        *base_overrides(init_dir, tmp_path / "run"), "loss.beta=0.04", "dash.filter=true", "dash.micro_batch_size=8",
        "dynamic_sampling.enabled=true", "dynamic_sampling.max_rounds=1", "eval.levels=[1, 2]", "eval.per_level=4",
        "steps=2", "rewards={binary: 1.0, logic_rl: 0.5}",
    ])
    result = gt.train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "reward" in line.get("metrics", line)]
    assert len(steps) == 2
    last = result.history[-1]
    for key in ("reward", "reward_std", "rewards/binary/mean", "rewards/logic_rl/mean", "frac_reward_zero_std",
                "completions/mean_length", "completions/clipped_ratio", "kl", "entropy", "clip_ratio/low_mean",
                "clip_ratio/high_mean", "num_tokens", "step_time", "sampler/tokens_per_s", "train/tokens_per_s",
                "sampler_trainer/logp_diff_mean", "dash/kept_frac", "eval/acc/gf/1", "eval/acc/gf/2",
                "dynamic_sampling/rounds"):
        assert key in last, key
    assert 0 < last["dash/kept_frac"] <= 1
    assert last["dash/micro_batches"] == np.ceil(last["dash/kept_frac"] * 16 / 8)
    # sampler log-probs match a trainer forward pass with the same weights (float32 model)
    assert last["sampler_trainer/logp_diff_mean"] < 1e-3
    assert result.history[0]["step"] == 0 and "eval/acc" in result.history[0]


CONFIG = ROOT / "tests" / "data" / "grpo_tiny.yaml"
WORKER = ROOT / "tests" / "grpo_worker.py"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def _command(args) -> list[str]:
    return [sys.executable, "-m", "tailor_jax.cli", "grpo", str(CONFIG), *args]


def _run_cli(args):
    return subprocess.run(_command(args), capture_output=True, text=True, cwd=ROOT, env=ENV)


def _run_worker(args, kill_after_step: int | None = None):
    """`tailor-jax grpo` with the digit reward (tests/grpo_toy.py: rewards vary within a group, so
    the gradients are not zero), killed by SIGKILL right after `kill_after_step` is logged."""
    kill = ["--kill-after-step", str(kill_after_step)] if kill_after_step is not None else []
    return subprocess.run([sys.executable, str(WORKER), *kill, "grpo", str(CONFIG), *args], capture_output=True,
                          text=True, cwd=ROOT, env=ENV, timeout=600)


def _params(run_dir: Path, init_dir: Path):
    cfg = load_config(gt.GRPOConfig, None, base_overrides(init_dir, run_dir))
    from tailor_jax.train.checkpoint import Checkpointer, TrainCheckpoint

    model, _ = gt.load_policy(cfg, None, None)
    from flax import nnx

    params = nnx.state(model, nnx.Param)
    with Checkpointer(run_dir / "checkpoints", cfg.checkpoint) as ck:
        restored = ck.restore_latest(TrainCheckpoint(0, params))
    return restored.step, jax.tree.leaves(restored.params)


def _logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_exact_resume_after_sigkill(init_dir, tmp_path):
    steps = 4
    kill_after = random.Random(24).randint(2, steps - 1)  # seeded: a failure can be replayed
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    overrides = lambda run_dir: [*base_overrides(init_dir, run_dir), f"steps={steps}"]  # noqa: E731
    done = _run_worker(overrides(full_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(r["grad_norm"] > 0 for r in _logged(full_dir)), "the run trained on zero gradients"

    killed = _run_worker(overrides(killed_dir), kill_after_step=kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # the kill landed mid-run: step `kill_after` was logged, its checkpoint not yet saved
    from tailor_jax.config import CheckpointConfig
    from tailor_jax.train.checkpoint import Checkpointer

    with Checkpointer(killed_dir / "checkpoints", CheckpointConfig(async_save=False)) as checkpointer:
        saved = checkpointer.latest_step()
    assert saved == kill_after - 1 >= 1
    before = _logged(killed_dir)
    assert [r["step"] for r in before] == list(range(1, kill_after + 1)) and kill_after < steps

    resumed = _run_worker(overrides(killed_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rerun = _logged(killed_dir)[len(before):]
    assert [r["step"] for r in rerun] == list(range(saved + 1, steps + 1)), "the rerun did not start after the checkpoint"
    assert all(r["grad_norm"] > 0 for r in rerun)

    step_a, full = _params(full_dir, init_dir)
    step_b, again = _params(killed_dir, init_dir)
    assert step_a == step_b == steps
    for a, b in zip(full, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from flax import nnx

    from tailor_jax.model import load_pretrained

    initial = jax.tree.leaves(nnx.state(load_pretrained(init_dir, dtype="float32"), nnx.Param))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(initial, full)), "training changed nothing"


def test_bad_config_is_one_line(init_dir, tmp_path):
    result = _run_cli([*base_overrides(init_dir, tmp_path / "r"), "dash.tua=0.2"])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "dash.tau" in result.stderr
    result = _run_cli([f"run_dir={tmp_path / 'r2'}", f"init={tmp_path / 'nowhere'}"])
    assert result.returncode == 2 and "config.json" in result.stderr
    assert not (tmp_path / "r2").exists()
