"""SFT: the loss, packing equivalence, gradient accumulation, and the trainer end to end."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tailor_jax.data import pipeline
from tailor_jax.model import Transformer, get_preset
from tailor_jax.train import sft
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.train.state import create_train_state

from sft_toy import ToySumTask, toy_records, toy_tokenizer

TASK = ToySumTask()


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


def tiny_model(vocab_size: int, seed: int = 0) -> Transformer:
    config = get_preset("tiny").replace(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
        num_kv_heads=1, head_dim=16,
    )
    return Transformer(config, rngs=nnx.Rngs(seed))


def test_masked_nll_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    mask = rng.integers(0, 2, size=(2, 5))
    total, count = sft.masked_nll(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(total), -(picked * mask).sum(), rtol=1e-5)
    assert float(count) == mask.sum()


def test_packed_batch_equals_examples_one_by_one(tokenizer):
    records = toy_records(9, seed=11)
    config = pipeline.PipelineConfig(seq_len=64, batch_size=2, seed=0, num_epochs=1)
    packed = next(iter(pipeline.sft_dataset(records, TASK, tokenizer, config)))
    assert packed["segment_ids"].max() >= 3, "the test needs rows holding several examples"
    model = tiny_model(len(tokenizer))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_and_grad = jax.jit(jax.value_and_grad(sft.sft_loss, has_aux=True), static_argnums=1)

    (packed_nll, (packed_count, _)), packed_grads = loss_and_grad(params, graphdef, rest, packed)
    # Reference: each example alone in a row, right-padded; segment ids all 1, so only the
    # causal mask applies (a real token never sees the padding after it).
    nll, count = 0.0, 0.0
    grads = jax.tree.map(jnp.zeros_like, params)
    n_examples = 0
    width = packed["inputs"].shape[1]
    for row in range(packed["inputs"].shape[0]):
        seg = packed["segment_ids"][row]
        for s in set(seg[seg > 0].tolist()):
            idx = np.flatnonzero(seg == s)
            single = {k: np.zeros((1, width), np.int32) for k in packed}
            for k in ("inputs", "targets", "loss_mask"):
                single[k][0, : len(idx)] = packed[k][row, idx]
            single["segment_ids"][:] = 1
            single["positions"][0] = np.arange(width)
            (e_nll, (e_count, _)), e_grads = loss_and_grad(params, graphdef, rest, single)
            nll, count = nll + e_nll, count + e_count
            grads = jax.tree.map(jnp.add, grads, e_grads)
            n_examples += 1
    assert n_examples >= 3
    np.testing.assert_allclose(float(packed_count), float(count))
    np.testing.assert_allclose(float(packed_nll), float(nll), rtol=1e-5)
    _assert_trees_close(packed_grads, grads)
    # Negative control: without segment ids the packed examples see each other.
    unsegmented = dict(packed, segment_ids=np.ones_like(packed["segment_ids"]))
    (leaky_nll, _), _ = loss_and_grad(params, graphdef, rest, unsegmented)
    assert abs(float(leaky_nll) - float(nll)) > 20 * 1e-5 * abs(float(nll))  # 20x the tolerance above


def _assert_trees_close(got_tree, want_tree, rtol=1e-5):
    """Leaf-wise equality up to float32 summation-order noise, scaled by each leaf's magnitude."""
    for got, want in zip(jax.tree.leaves(got_tree), jax.tree.leaves(want_tree), strict=True):
        got, want = np.asarray(got), np.asarray(want)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


def test_gradient_accumulation_gives_the_same_update(tokenizer):
    records = toy_records(30, seed=12)
    config = pipeline.PipelineConfig(seq_len=48, batch_size=8, seed=0, num_epochs=1)
    batch = next(iter(pipeline.sft_dataset(records, TASK, tokenizer, config)))
    mesh = create_mesh(MeshConfig(data=2, fsdp=1), jax.devices()[:2])
    tx = optax.sgd(0.5)  # not Adam: its normalisation would amplify float noise in ~0 gradients
    results = []
    for accum in (1, 2, 4):
        graphdef, state = create_train_state(tiny_model(len(tokenizer)), tx, seed=0, mesh=mesh)
        step = jax.jit(sft.make_train_step(graphdef, tx, accum_steps=accum))
        state, metrics = step(state, batch)
        results.append((state, metrics))
    (base, base_metrics), others = results[0], results[1:]
    assert int(base.step) == 1 and float(base_metrics["num_tokens"]) == batch["loss_mask"].sum()
    for state, metrics in others:
        np.testing.assert_allclose(float(metrics["loss"]), float(base_metrics["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["grad_norm"]), float(base_metrics["grad_norm"]), rtol=1e-5)
        _assert_trees_close(state.params, base.params)
