"""Chunked token log-probs (tailor_jax.model.logprobs) against the plain computation on full logits:
log-probs, entropy, argmax-correctness, the SFT and GRPO losses and their gradients wrt the hidden
states and the LM head, in float32, for chunk sizes that do and do not divide the length, masked
positions and temperature != 1; and the compiled gradient keeps no [rows, T, V] array alive."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tailor_jax.model import ModelConfig, Transformer
from tailor_jax.model.logprobs import chunk_length, logprobs_from_logits, model_token_logprobs, token_logprobs
from tailor_jax.train.grpo import grpo_loss

ROWS, T, H, V = 3, 7, 16, 50
TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(ROWS, T, H)), jnp.float32)
    weight = jnp.asarray(rng.normal(scale=0.7, size=(H, V)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, size=(ROWS, T)), jnp.int32)
    mask = jnp.asarray(rng.integers(0, 2, size=(ROWS, T)), jnp.float32).at[:, 0].set(1.0)
    return hidden, weight, targets, mask


def _reference(hidden, weight, targets, temperature):
    """Untiled: full [rows, T, V] logits, a plain log-softmax."""
    logits = jnp.einsum("rth,hv->rtv", hidden, weight, precision="highest")
    logp_all = jax.nn.log_softmax(logits / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    correct = (logits.argmax(-1) == targets).astype(jnp.float32)
    return logp, entropy, correct


def _tiled(hidden, weight, targets, temperature, chunk, tied):
    if tied:  # the tied layout: the embedding [V, H]
        return token_logprobs(hidden, weight.T, targets, temperature=temperature, transposed=True,
                              chunk_tokens=chunk, entropy=True, correct=True)
    return token_logprobs(hidden, weight, targets, temperature=temperature, chunk_tokens=chunk,
                          entropy=True, correct=True)


# rows=3: chunk 1 and 4 -> 1 position per chunk, 8 -> 2 (7 = 2+2+2+1), 15 -> 5 (5+2), 1000 -> all 7
CHUNKS = [1, 8, 15, 1000]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("tied", [False, True])
def test_logprobs_entropy_correct_match_full_logits(chunk, temperature, tied):
    hidden, weight, targets, _ = _inputs()
    got = _tiled(hidden, weight, targets, temperature, chunk, tied)
    want = _reference(hidden, weight, targets, temperature)
    for a, b in zip(got, want):
        assert a.shape == (ROWS, T) and a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)
    assert 0 < float(got.correct.sum()) < ROWS * T  # both outcomes occur


def test_chunk_length():
    assert [chunk_length(3, 7, c) for c in (1, 4, 8, 15, 1000)] == [1, 1, 2, 5, 7]
    assert chunk_length(8, 2048, 1024) == 128


def _sft(stats_or_logp, mask):
    return -(stats_or_logp * mask).sum() / mask.sum()


def _grpo(logp, entropy, mask, extra):
    old, ref, adv = extra
    loss, _ = grpo_loss(logp, old, ref, adv, mask, epsilon_low=0.2, epsilon_high=0.28, beta=0.05, kl="k3")
    return loss + 0.01 * (entropy * mask).sum()  # an entropy bonus, so its gradient is checked too


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("which", ["sft", "grpo"])
def test_losses_and_gradients_match_full_logits(chunk, tied, which):
    hidden, weight, targets, mask = _inputs(1)
    rng = np.random.default_rng(2)
    temperature = 0.7 if which == "grpo" else 1.0
    ref_logp, _, _ = _reference(hidden, weight, targets, temperature)
    # old / reference log-probs near the current ones, so the ratio is clipped on some tokens and not others
    extra = (ref_logp + jnp.asarray(rng.normal(scale=0.3, size=(ROWS, T)), jnp.float32),
             ref_logp + jnp.asarray(rng.normal(scale=0.3, size=(ROWS, T)), jnp.float32),
             jnp.asarray(rng.normal(size=ROWS), jnp.float32))

    def tiled_loss(h, w):
        stats = _tiled(h, w, targets, temperature, chunk, tied)
        return _sft(stats.logp, mask) if which == "sft" else _grpo(stats.logp, stats.entropy, mask, extra)

    def full_loss(h, w):
        logp, entropy, _ = _reference(h, w, targets, temperature)
        return _sft(logp, mask) if which == "sft" else _grpo(logp, entropy, mask, extra)

    got, got_grads = jax.value_and_grad(tiled_loss, argnums=(0, 1))(hidden, weight)
    want, want_grads = jax.value_and_grad(full_loss, argnums=(0, 1))(hidden, weight)
    np.testing.assert_allclose(float(got), float(want), **TOL)
    for a, b in zip(got_grads, want_grads):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)
    # masked positions get no gradient
    assert float(jnp.abs(got_grads[0] * (1 - mask)[..., None]).max()) == 0.0


@pytest.mark.parametrize("tied", [False, True])
def test_model_logprobs_match_model_logits(tied):
    config = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=8, tie_word_embeddings=tied)
    model = Transformer(config, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 40, size=(2, 9)), jnp.int32)
    hidden = model.hidden_states(tokens)
    got = model_token_logprobs(model, hidden[:, :-1], tokens[:, 1:], chunk_tokens=5, temperature=0.8).logp
    want = logprobs_from_logits(model.logits(hidden)[:, :-1], tokens[:, 1:], 0.8)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def test_gradient_keeps_no_full_logits_alive():
    """Compiled (not run): the tiled gradient's temporaries stay below a quarter of one float32
    [rows, T, V] array, while the untiled gradient needs more than one."""
    rows, length, hidden_size, vocab = 4, 512, 64, 8192
    full_bytes = rows * length * vocab * 4  # 64 MiB
    h = jax.ShapeDtypeStruct((rows, length, hidden_size), jnp.float32)
    w = jax.ShapeDtypeStruct((hidden_size, vocab), jnp.float32)
    t = jax.ShapeDtypeStruct((rows, length), jnp.int32)

    def tiled(h, w, t):
        stats = token_logprobs(h, w, t, chunk_tokens=128, entropy=True)
        return -stats.logp.sum() + 0.01 * stats.entropy.sum()

    def untiled(h, w, t):
        return -logprobs_from_logits(jnp.einsum("rth,hv->rtv", h, w), t).sum()

    def temp(fn):
        compiled = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(h, w, t).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp(untiled) > full_bytes
    assert temp(tiled) < full_bytes / 4


@pytest.mark.parametrize("tile_elements", [1, 7 * 4, 1000])  # tiles of 1 row; 7 rows (the last shifted); one tile
def test_embed_lookup_gradient_matches_take(tile_elements):
    """The embedding lookup's gradient, built a vocabulary tile at a time, equals jnp.take's."""
    from tailor_jax.model.vocab_tiles import embed_lookup

    rng = np.random.default_rng(4)
    table = jnp.asarray(rng.normal(size=(V, 4)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, V, size=(ROWS, 40)), jnp.int32)
    cotangent = jnp.asarray(rng.normal(size=(ROWS, 40, 4)), jnp.float32)
    got = jax.grad(lambda t: (embed_lookup(t, ids, tile_elements) * cotangent).sum())(table)
    want = jax.grad(lambda t: (jnp.take(t, ids, axis=0) * cotangent).sum())(table)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
    np.testing.assert_array_equal(np.asarray(embed_lookup(table, ids)), np.asarray(jnp.take(table, ids, axis=0)))
