"""Attention implementations (model/attention.py) against the pre-#22 path, for every mask kind.

The oracle `_today` is the attention as the model computed it before: a dense boolean mask
[B, T, S] built the way `Transformer.__call__` / `shared_prefix_forward` built it, float32 scores
masked with the float32 minimum, softmax, one block. Every implementation that runs on CPU is
compared with it in float32 (outputs and gradients within 1e-5) on tiny shapes: `chunked`
(flash-style custom VJP), `xla` (jax.nn.dot_product_attention), the cuDNN adapter with the XLA
kernel substituted for cuDNN (its mask plumbing; cuDNN itself needs an NVIDIA GPU), and the
splash adapter with the Pallas kernel in interpret mode (its mask translation; the kernel itself
needs a TPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tailor_jax.errors import TailorError
from tailor_jax.model import attention as attn_lib
from tailor_jax.model.attention import AttentionMask, attention, select_implementation
from tailor_jax.model.config import ModelConfig
from tailor_jax.model.transformer import Transformer, create_model, init_cache

MASKED = float(np.finfo(np.float32).min)
HKV, G, D = 2, 2, 8


def _today(q, k, v, dense_mask):
    """The pre-#22 attention: q [B, T, Hkv, G, D], k/v [B, S, Hkv, D], dense bool mask [B, T, S]."""
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    scores = jnp.where(dense_mask[:, None, None], scores, MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v)


def _qkv(batch, length, keys, seed):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, length, HKV, G, D)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(batch, keys, HKV, D)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(batch, keys, HKV, D)), jnp.float32)
    return q, k, v


def _case(kind):
    """(q, k, v, AttentionMask, dense mask as the old model built it, bool [B, T] queries that matter)."""
    if kind == "causal":
        q, k, v = _qkv(2, 37, 37, 1)
        dense = jnp.broadcast_to(jnp.tril(jnp.ones((37, 37), bool)), (2, 37, 37))
        return q, k, v, AttentionMask(), dense, np.ones((2, 37), bool)
    if kind == "left_padding":
        q, k, v = _qkv(2, 37, 37, 2)
        valid = np.ones((2, 37), bool)
        valid[1, :11] = False
        dense = jnp.tril(jnp.ones((37, 37), bool))[None] & valid[:, None, :]
        return q, k, v, AttentionMask(key_valid=jnp.asarray(valid)), dense, valid
    if kind == "packed_segments":
        q, k, v = _qkv(2, 40, 40, 3)
        seg = np.where(np.arange(40) < 17, 1, np.where(np.arange(40) < 33, 2, 0))[None].repeat(2, 0)
        seg[1] = np.where(np.arange(40) < 25, 1, 2)
        valid = np.ones((2, 40), bool)
        same = seg[:, :, None] == seg[:, None, :]
        dense = jnp.tril(jnp.ones((40, 40), bool))[None] & valid[:, None, :] & same & (seg[:, None, :] != 0)
        mask = AttentionMask(key_valid=jnp.asarray(valid), q_segments=jnp.asarray(seg), k_segments=jnp.asarray(seg))
        return q, k, v, mask, dense, seg != 0
    if kind == "shared_prompt":  # continuations [R, C] after their prompt's P slots (left-padded prompts)
        p, c = 9, 30
        q, k, v = _qkv(3, c, p + c, 4)
        prefix_mask = np.ones((3, p), bool)
        prefix_mask[1, :4] = False
        own = np.arange(c)[None] < np.array([30, 12, 1])[:, None]
        causal = np.tril(np.ones((c, c), bool))[None] & own[:, None, :]
        dense = np.concatenate([np.broadcast_to(prefix_mask[:, None, :], (3, c, p)), causal], axis=2)
        mask = AttentionMask(key_valid=jnp.asarray(np.concatenate([prefix_mask, own], 1)), static_offset=p)
        return q, k, v, mask, jnp.asarray(dense), own
    if kind in ("cache_decode", "cache_prefill"):  # new rows at slot `start` of a 24-slot cache
        start, length = (13, 1) if kind == "cache_decode" else (6, 5)
        q, k, v = _qkv(2, length, 24, 5)
        slot_mask = np.zeros((2, 24), bool)
        slot_mask[:, : start + length] = True
        slot_mask[1, :3] = False  # left padding of the prompt
        slots = np.arange(24)
        causal = slots[None, :] <= start + np.arange(length)[:, None]
        dense = causal[None] & slot_mask[:, None, :]
        mask = AttentionMask(key_valid=jnp.asarray(slot_mask), cache_index=jnp.asarray(start, jnp.int32))
        return q, k, v, mask, jnp.asarray(dense), np.ones((2, length), bool)
    raise ValueError(kind)


KINDS = ["causal", "left_padding", "packed_segments", "shared_prompt", "cache_decode", "cache_prefill"]


def _cudnn_via_xla(monkeypatch):
    """Route implementation='cudnn' to the XLA kernel, recording the calls (no GPU here)."""
    original = jax.nn.dot_product_attention
    calls = []

    def fake(*args, implementation=None, **kwargs):
        calls.append(dict(implementation=implementation, is_causal=kwargs.get("is_causal"),
                          mask=None if kwargs.get("mask") is None else kwargs["mask"].shape))
        return original(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    return calls


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", ["dense", "chunked", "xla", "cudnn"])
def test_outputs_and_gradients_match_the_old_path(kind, impl, monkeypatch):
    if impl == "cudnn":
        calls = _cudnn_via_xla(monkeypatch)
    q, k, v, mask, dense, queries = _case(kind)
    weights = jnp.asarray(np.random.default_rng(9).normal(size=q.shape) * queries[:, :, None, None, None], jnp.float32)

    def loss(fn, q, k, v):  # padding queries' outputs are never used, so they carry no weight
        out = fn(q, k, v)
        return (out * weights).sum(), out

    ours = jax.jit(jax.value_and_grad(lambda *a: loss(
        lambda q, k, v: attention(q, k, v, mask, implementation=impl, query_chunk=8), *a), argnums=(0, 1, 2), has_aux=True))
    ref = jax.value_and_grad(lambda *a: loss(lambda q, k, v: _today(q, k, v, dense), *a), argnums=(0, 1, 2), has_aux=True)
    (l1, out1), g1 = ours(q, k, v)
    (l2, out2), g2 = ref(q, k, v)
    assert np.isfinite(np.asarray(out1)).all()
    np.testing.assert_allclose(np.asarray(out1)[queries], np.asarray(out2)[queries], atol=1e-5)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if impl == "cudnn":
        assert calls and all(c["implementation"] == "cudnn" for c in calls)
        plain = kind == "causal"
        assert all(c["is_causal"] == plain and (c["mask"] is None) == plain for c in calls)


@pytest.mark.parametrize("kind", ["causal", "left_padding", "packed_segments", "shared_prompt"])
def test_splash_adapter_translates_every_mask(kind):
    """The splash kernel in Pallas interpret mode on CPU, lengths padded to its 128-row blocks."""
    q, k, v, mask, dense, queries = _case(kind)
    length, keys = q.shape[1], k.shape[1]
    # Grow to 128 queries / keys: extra key slots invalid (or segment 0), extra queries ignored.
    pad_q = 128 - length
    pad_k = -(-(mask.static_offset + 128) // 128) * 128 - keys  # query 127 sees slot offset + 127
    q = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    batch = q.shape[0]
    valid = np.ones((batch, keys), bool) if mask.key_valid is None else np.asarray(mask.key_valid)
    valid = np.pad(valid, ((0, 0), (0, pad_k)))
    segs = None if mask.q_segments is None else jnp.pad(mask.k_segments, ((0, 0), (0, pad_k)))
    big = AttentionMask(key_valid=jnp.asarray(valid), q_segments=segs, k_segments=segs, static_offset=mask.static_offset)
    out = attn_lib.splash_attention(q, k, v, big, interpret=True)[:, :length]
    np.testing.assert_allclose(np.asarray(out)[queries], np.asarray(_today(*_case(kind)[:3], dense))[queries],
                               atol=1e-5)


def test_splash_refuses_what_it_cannot_take():
    q, k, v, mask, _, _ = _case("cache_prefill")
    with pytest.raises(TailorError, match="splash"):
        attn_lib.splash_attention(q, k, v, mask)


def test_auto_selects_by_platform_dtype_and_mask(monkeypatch):
    static, cached = AttentionMask(), AttentionMask(cache_index=jnp.asarray(3))
    expected = {
        ("cpu", jnp.float32, "static"): "chunked", ("cpu", jnp.bfloat16, "cached"): "dense",
        ("gpu", jnp.bfloat16, "static"): "cudnn", ("gpu", jnp.float16, "static"): "cudnn",
        ("gpu", jnp.float32, "static"): "xla", ("gpu", jnp.bfloat16, "cached"): "xla",
        ("tpu", jnp.bfloat16, "static"): "splash", ("tpu", jnp.bfloat16, "cached"): "xla",
    }
    for (platform, dtype, which), want in expected.items():
        monkeypatch.setattr(attn_lib, "_platform", lambda p=platform: p)
        mask = static if which == "static" else cached
        assert select_implementation("auto", dtype, mask, 256, 256) == want, (platform, dtype, which)
    monkeypatch.setattr(attn_lib, "_platform", lambda: "tpu")
    assert select_implementation("auto", jnp.bfloat16, static, 100, 100) == "chunked"  # not 128-aligned
    assert select_implementation("xla", jnp.bfloat16, static, 100, 100) == "xla"  # explicit choice wins
    with pytest.raises(TailorError, match="attention must be one of"):
        select_implementation("flash", jnp.bfloat16, static, 8, 8)


def test_auto_on_gpu_calls_cudnn_for_bfloat16_and_xla_for_float32(monkeypatch):
    calls = _cudnn_via_xla(monkeypatch)
    monkeypatch.setattr(attn_lib, "_platform", lambda: "gpu")
    q, k, v, mask, _, _ = _case("left_padding")
    attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask)
    attention(q, k, v, mask)
    assert [c["implementation"] for c in calls] == ["cudnn", "xla"]


# Model level: every implementation inside the decoder, float32.

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, attention_bias=True, attention_query_chunk=8)


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_model_forward_and_gradients_with_padding_segments_and_position_gaps(impl):
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, 64, (2, 29)), jnp.int32)
    valid = np.ones((2, 29), bool)
    valid[1, :5] = False
    segments = jnp.asarray(np.where(np.arange(29) < 18, 1, 2)[None].repeat(2, 0) * valid)
    positions = np.where(np.arange(29) < 18, np.arange(29), np.arange(29) - 18)
    positions = jnp.asarray(np.where(np.arange(29) % 7 == 3, positions + 5, positions)[None].repeat(2, 0))  # gaps
    weights = jnp.asarray(rng.normal(size=(2, 29, 32)) * valid[..., None], jnp.float32)

    def loss(model):
        hidden, _ = model(tokens, positions, attention_mask=jnp.asarray(valid), segment_ids=segments, return_hidden=True)
        return (hidden * weights).sum()

    ref = nnx.jit(nnx.value_and_grad(loss))(create_model(CONFIG.replace(attention="dense"), seed=1))
    ours = nnx.jit(nnx.value_and_grad(loss))(create_model(CONFIG.replace(attention=impl), seed=1))
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1])):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_model_cache_prefill_and_decode(impl):
    """Prefill a left-padded prompt into a KV cache, then decode 3 tokens: same logits as dense."""
    rng = np.random.default_rng(4)
    prompt = jnp.asarray(rng.integers(0, 64, (2, 6)), jnp.int32)
    valid = np.ones((2, 6), bool)
    valid[0, :2] = False
    positions = jnp.asarray(np.maximum(np.cumsum(valid, 1) - 1, 0))

    def run(model):
        cache = init_cache(model.config, 2, 12)
        logits, cache = model(prompt, positions, attention_mask=jnp.asarray(valid), cache=cache)
        outs = [logits[:, -1]]
        for step in range(3):
            token = jnp.argmax(outs[-1], -1)[:, None].astype(jnp.int32)
            pos = positions[:, -1:] + 1 + step
            logits, cache = model(token, pos, attention_mask=jnp.ones((2, 1), bool), cache=cache)
            outs.append(logits[:, -1])
        return jnp.stack(outs)

    ref = nnx.jit(run)(create_model(CONFIG.replace(attention="dense"), seed=2))
    ours = nnx.jit(run)(create_model(CONFIG.replace(attention=impl), seed=2))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_model_shared_prefix_matches_dense():
    rng = np.random.default_rng(5)
    p, c = 7, 19
    prompt_mask = np.ones((2, p), bool)
    prompt_mask[1, :3] = False
    prompt = jnp.asarray(rng.integers(0, 64, (2, p)), jnp.int32)
    prompt_pos = jnp.asarray(np.maximum(np.cumsum(prompt_mask, 1) - 1, 0))
    row_prompt = jnp.asarray([0, 1, 1])
    tokens = jnp.asarray(rng.integers(0, 64, (3, c)), jnp.int32)
    mask = np.arange(c)[None] < np.array([19, 8, 1])[:, None]
    positions = jnp.asarray(prompt_mask.sum(1)[np.asarray(row_prompt)][:, None] + np.arange(c)[None])
    weights = jnp.asarray(rng.normal(size=(3, c, 32)) * mask[..., None], jnp.float32)

    def loss(model):
        _, hidden = model.shared_prefix_forward(prompt, prompt_pos, jnp.asarray(prompt_mask), row_prompt,
                                                tokens, positions, jnp.asarray(mask))
        return (hidden * weights).sum()

    ref = nnx.jit(nnx.value_and_grad(loss))(create_model(CONFIG.replace(attention="dense"), seed=3))
    ours = nnx.jit(nnx.value_and_grad(loss))(create_model(CONFIG.replace(attention="chunked"), seed=3))
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1])):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))


# Remat: policies accepted, same gradients, and a smaller compiled program.

def test_remat_config_values():
    assert CONFIG.replace(remat=True).remat == "full" and CONFIG.replace(remat=False).remat == "none"
    assert CONFIG.replace(remat="dots_no_batch").remat == "dots_no_batch"
    with pytest.raises(TailorError, match="remat must be one of"):
        CONFIG.replace(remat="some")
    with pytest.raises(TailorError, match="attention must be one of"):
        CONFIG.replace(attention="flash")


def test_remat_policies_give_the_same_gradients():
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 64, (2, 20)), jnp.int32)

    def loss(model):
        hidden, _ = model(tokens, return_hidden=True)
        return (hidden**2).sum()

    grads = {policy: nnx.jit(nnx.grad(loss))(create_model(CONFIG.replace(remat=policy, attention="chunked"), seed=4))
             for policy in ("none", "full", "dots", "dots_no_batch")}
    for policy in ("full", "dots", "dots_no_batch"):
        for a, b in zip(jax.tree.leaves(grads[policy]), jax.tree.leaves(grads["none"])):
            np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def test_pretrained_takes_runtime_options_only(tmp_path):
    from tailor_jax.model.hf_io import load_pretrained, save_pretrained

    save_pretrained(create_model(CONFIG, seed=0), tmp_path)
    model = load_pretrained(tmp_path, options={"remat": "dots", "attention": "xla"})
    assert (model.config.remat, model.config.attention) == ("dots", "xla")
    with pytest.raises(TailorError, match="hidden_size cannot change a pretrained checkpoint"):
        load_pretrained(tmp_path, options={"hidden_size": 16})


def _compiled_temp_bytes(config: ModelConfig, rows: int, length: int) -> int:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    ints = jax.ShapeDtypeStruct((rows, length), jnp.int32)

    def loss(state, tokens):
        hidden, _ = nnx.merge(graphdef, state)(tokens, return_hidden=True)
        return hidden.sum()

    lowered = jax.jit(jax.grad(loss)).lower(state, ints)
    compiled = lowered.compile(compiler_options=attn_lib.CPU_KEEP_BARRIERS)
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_full_shrinks_compiled_temporaries():
    config = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=512, num_layers=4, num_heads=4,
                         num_kv_heads=2, head_dim=16, attention="chunked")
    none = _compiled_temp_bytes(config.replace(remat="none"), 4, 256)
    full = _compiled_temp_bytes(config.replace(remat="full"), 4, 256)
    assert full < 0.6 * none, (full, none)


def test_chunked_attention_temporaries_are_linear_in_length():
    """Doubling the length about doubles the chunked path's temporaries (dense: about 4x)."""
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_layers=1, num_heads=8,
                         num_kv_heads=2, head_dim=4, attention_query_chunk=32)
    temps = {(impl, n): _compiled_temp_bytes(config.replace(attention=impl), 2, n)
             for impl in ("dense", "chunked") for n in (256, 512)}
    assert temps["chunked", 512] < 2.6 * temps["chunked", 256], temps
    assert temps["dense", 512] > 3.0 * temps["dense", 256], temps
