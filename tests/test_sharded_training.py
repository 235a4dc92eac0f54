"""Sharded training equals one device: one SFT step and one GRPO update (the trainers' jitted
functions, placed the way `sft.train` / `grpo.train` place them) on an fsdp x tensor and a
data x fsdp mesh of the 8 virtual CPU devices (tests/conftest.py) give the loss, gradient norm
and updated parameters of the same step on a single device, up to float32 summation order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from tailor_jax.data import pipeline
from tailor_jax.model import ModelConfig, create_model
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.parallel.sharding import use_sharding
from tailor_jax.train import grpo as gt
from tailor_jax.train import sft
from tailor_jax.train.state import create_train_state, global_batch, state_shardings_of

from sft_toy import ToySumTask, toy_records, toy_tokenizer

CONFIG = ModelConfig(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=16, attention_bias=True, tie_word_embeddings=False,
)
SINGLE = MeshConfig(data=1, fsdp=1, tensor=1)
MESHES = {"fsdp4_tensor2": MeshConfig(data=1, fsdp=4, tensor=2), "data2_fsdp4": MeshConfig(data=2, fsdp=4, tensor=1)}
TX = optax.sgd(0.5)  # not Adam: its normalisation would amplify float noise in ~0 gradients


def _mesh(config: MeshConfig):
    devices = jax.devices()[:1] if config is SINGLE else jax.devices()
    assert len(devices) == (1 if config is SINGLE else 8), "tests/conftest.py should provide 8 virtual CPU devices"
    return create_mesh(config, devices)


def _assert_trees_close(got_tree, want_tree, rtol=2e-5):
    """Leaf-wise equality up to float32 summation-order noise, scaled by each leaf's magnitude."""
    for got, want in zip(jax.tree.leaves(got_tree), jax.tree.leaves(want_tree), strict=True):
        got, want = np.asarray(got), np.asarray(want)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


# --- SFT ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_batch():
    tokenizer = toy_tokenizer()
    config = pipeline.PipelineConfig(seq_len=48, batch_size=8, seed=0, num_epochs=1)
    batch = next(iter(pipeline.sft_dataset(toy_records(40, seed=3), ToySumTask(), tokenizer, config)))
    return batch, len(tokenizer)


def _sft_step(mesh_config: MeshConfig, batch: dict, vocab_size: int):
    mesh, rules = _mesh(mesh_config), mesh_config.axis_rules()
    model = create_model(CONFIG.replace(vocab_size=-(-vocab_size // 8) * 8), seed=0)
    graphdef, state = create_train_state(model, TX, 0, mesh, rules)
    with use_sharding(mesh, rules):
        step = jax.jit(sft.make_train_step(graphdef, TX, accum_steps=2), donate_argnums=0,
                       out_shardings=(state_shardings_of(state), NamedSharding(mesh, PartitionSpec())))
        state, metrics = step(state, global_batch(batch, mesh, rules))
    return jax.device_get(state.params), {k: float(v) for k, v in metrics.items()}, state


@pytest.fixture(scope="module")
def sft_single(sft_batch):
    params, metrics, _ = _sft_step(SINGLE, *sft_batch)
    return params, metrics


@pytest.mark.parametrize("name", list(MESHES))
def test_sft_step_on_a_mesh_equals_one_device(name, sft_batch, sft_single):
    want_params, want = sft_single
    params, got, state = _sft_step(MESHES[name], *sft_batch)
    # the step really ran sharded: some weight is split over 4 devices (fsdp) or more
    shards = {len(x.sharding.device_set) for x in jax.tree.leaves(state.params)}
    assert max(shards) == 8 and want["grad_norm"] > 0
    assert got["num_tokens"] == want["num_tokens"] == sft_batch[0]["loss_mask"].sum()
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-5)
    _assert_trees_close(params, want_params)


# --- GRPO --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grpo_rows():
    """8 rows in 2 groups of 4 over 2 prompts, random completions of mixed length, advantages,
    and sampler log-probs a little off the model's (so the ratio clipping is exercised)."""
    rng = np.random.default_rng(0)
    n, c = 8, 12
    prompts = [list(rng.integers(3, 100, size=5))] * 4 + [list(rng.integers(3, 100, size=7))] * 4
    rows = gt.build_rows(prompts, rng.integers(3, 100, size=(n, c)), rng.integers(1, c + 1, size=n), pad_id=0)
    rows["advantages"] = rng.normal(size=n).astype(np.float32)
    model = create_model(CONFIG, seed=0)
    mesh = _mesh(SINGLE)
    graphdef, state = create_train_state(model, TX, 0, mesh)
    logp = np.asarray(jax.jit(gt.make_logp_fn(graphdef, 1.0))(state.params, state.rest, {k: jnp.asarray(v) for k, v in rows.items()}))
    rows["old_logp"] = rows["sampler_logp"] = (logp + rng.normal(scale=0.2, size=logp.shape)).astype(np.float32)
    return rows


def _grpo_update(mesh_config: MeshConfig, rows: dict, micro: int = 4):
    """One update as `grpo.train` makes it: micro-batches accumulated, then applied."""
    mesh, rules = _mesh(mesh_config), mesh_config.axis_rules()
    graphdef, state = create_train_state(create_model(CONFIG, seed=0), TX, 0, mesh, rules)
    loss_cfg = gt.LossConfig(epsilon_low=0.1, epsilon_high=0.2, tis_cap=2.0)
    shardings, replicated = state_shardings_of(state), NamedSharding(mesh, PartitionSpec())
    shards = 1 if mesh_config is SINGLE else mesh_config.data * mesh_config.fsdp
    with use_sharding(mesh, rules):
        accumulate = jax.jit(gt.make_accumulate_fn(graphdef, loss_cfg, 1.0, rows["tokens"].shape[1]),
                             donate_argnums=0, out_shardings=(shardings.params, replicated))
        apply = jax.jit(gt.make_apply_fn(TX), donate_argnums=0, out_shardings=(shardings, replicated))
        batches = gt.pack_micro_batches(rows, np.arange(len(rows["advantages"])), micro, slot_multiple=shards, min_width=4)
        total = rows["completion_mask"].sum()
        grads = jax.tree.map(jnp.zeros_like, state.params)
        per_batch = []  # each micro-batch's metrics: entropy, clip ratios, sampler/trainer drift
        for b in batches:
            grads, m = accumulate(grads, state.params, state.rest, gt.place_rows(b, mesh, rules),
                                  jnp.float32(b["completion_mask"].sum() / total))
            per_batch.append({k: float(v) for k, v in m.items()})
        state, norm = apply(state, grads)
    return jax.device_get(state.params), float(norm), per_batch


@pytest.fixture(scope="module")
def grpo_single(grpo_rows):
    return _grpo_update(SINGLE, grpo_rows)


@pytest.mark.parametrize("name", list(MESHES))
def test_grpo_update_on_a_mesh_equals_one_device(name, grpo_rows, grpo_single):
    want_params, want_norm, want_metrics = grpo_single
    params, norm, metrics = _grpo_update(MESHES[name], grpo_rows)
    assert want_norm > 0 and len(metrics) == len(want_metrics) == 2
    assert any(m["clip_ratio/region_mean"] > 0 for m in want_metrics)  # the clipping is exercised
    for got, want in zip(metrics, want_metrics):
        assert got.keys() == want.keys() and "entropy" in got
        for key in got:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(norm, want_norm, rtol=1e-5)
    _assert_trees_close(params, want_params)
