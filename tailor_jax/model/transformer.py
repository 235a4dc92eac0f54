"""Flax NNX decoder for the Qwen2 / Llama 3 family, with a KV cache for decoding.

Parameter layout (logical axes in brackets; HF weights are transposed/reshaped into it on load):
  embed [vocab, embed], lm_head [embed, vocab] (untied only), final_norm [norm]
  layers[i].attn: q_kernel [embed, q_heads, head_dim], k/v_kernel [embed, kv_heads, head_dim],
                  o_kernel [q_heads, head_dim, embed], optional q/k/v_bias [heads, head_dim], o_bias [embed]
  layers[i].mlp: gate_kernel, up_kernel [embed, mlp], down_kernel [mlp, embed]
  layers[i].input_norm, post_attn_norm [norm]
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from tailor_jax.errors import TailorError
from tailor_jax.model.attention import AttentionMask, attention
from tailor_jax.model.config import ModelConfig
from tailor_jax.model.vocab_tiles import embed_lookup
from jax.sharding import Mesh

from tailor_jax.parallel.sharding import Rules, constrain, shard_state, state_shardings



@struct.dataclass
class KVCache:
    """Keys/values of every layer for `max_len` slots; `index` is the next slot to write (same for all rows).

    Callers keep `index + new_tokens <= max_len`: inside jit an out-of-range write is clamped by XLA.
    """

    k: jax.Array  # [num_layers, batch, max_len, num_kv_heads, head_dim]
    v: jax.Array
    mask: jax.Array  # bool [batch, max_len]: slot holds a real (non-pad) token
    index: jax.Array  # int32 scalar


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache (all slots invalid, index 0) in the compute dtype unless `dtype` is given."""
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    dtype = config.compute_dtype if dtype is None else dtype
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        mask=jnp.zeros((batch, max_len), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies [head_dim // 2] (float32), with Llama-3 / linear scaling if configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq.astype(np.float32)
    if kind == "linear":
        return (inv_freq / scaling["factor"]).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise TailorError(f"unsupported rope_scaling type {kind!r}: supported are default, linear, llama3")


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate halves of the last axis of x [B, T, N, D] by cos/sin [B, T, D/2] (HF `rotate_half` layout)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def project(x: jax.Array, kernel: jax.Array, in_dims: int = 1, *, transposed: bool = False,
            preferred_element_type=None) -> jax.Array:
    """Contract the last `in_dims` axes of x with the leading `in_dims` axes of `kernel` (its
    trailing ones when `transposed`), as one 2-D matmul [rows, K] x [K, N].

    XLA:CPU runs the same contraction written as an einsum with extra free axes ("bth,hf->btf")
    markedly slower: a bench-tiny GRPO update micro-batch took 1.23-1.28x as long
    (benchmarks/cpu_layout_ab.py). The reshapes are free.
    """
    lead, k = x.shape[: x.ndim - in_dims], int(np.prod(x.shape[x.ndim - in_dims :]))
    rows = x.reshape(-1, k)
    if _WEIGHTS_AT_USE:
        rows, kernel = jax.lax.optimization_barrier((rows, kernel))
    if transposed:
        out = kernel.shape[: kernel.ndim - in_dims]
        y = jax.lax.dot_general(rows, kernel.reshape(-1, k), (((1,), (1,)), ((), ())),
                                preferred_element_type=preferred_element_type)
    else:
        out = kernel.shape[in_dims:]
        y = jnp.matmul(rows, kernel.reshape(k, -1), preferred_element_type=preferred_element_type)
    return y.reshape(*lead, *out)


_WEIGHTS_AT_USE = False


@contextlib.contextmanager
def weights_at_use():
    """While tracing inside: each matmul's weight waits for its input (an optimization barrier).

    For the CPU compile that stands in for a device's memory (train/memory_plan.py): XLA:CPU runs a
    bfloat16 matmul on float32 copies of its operands, and its scheduler makes the weights' copies
    early, so every layer's float32 MLP kernels (1.25 GiB at qwen2.5-0.5b) would be counted at
    once. A GPU/TPU program makes no such copies; tied to their inputs they are made one layer at
    a time. Off otherwise: on a device the barrier would keep FSDP's weight gathers from starting early.
    """
    global _WEIGHTS_AT_USE
    previous, _WEIGHTS_AT_USE = _WEIGHTS_AT_USE, True
    try:
        yield
    finally:
        _WEIGHTS_AT_USE = previous


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int | None, dtype, axes: tuple[str, ...]) -> nnx.Param:
    """Normal init with std 1/sqrt(fan_in) (zeros when fan_in is None), tagged with logical axes."""
    if fan_in is None:
        value = jnp.zeros(shape, dtype)
    else:
        value = (jax.random.normal(rngs.params(), shape, jnp.float32) / np.sqrt(fan_in)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), dtype), logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        h, nq, nkv, d = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        pd = config.params_dtype
        self.q_kernel = _param(rngs, (h, nq, d), h, pd, ("embed", "q_heads", "head_dim"))
        self.k_kernel = _param(rngs, (h, nkv, d), h, pd, ("embed", "kv_heads", "head_dim"))
        self.v_kernel = _param(rngs, (h, nkv, d), h, pd, ("embed", "kv_heads", "head_dim"))
        self.o_kernel = _param(rngs, (nq, d, h), nq * d, pd, ("q_heads", "head_dim", "embed"))
        if config.attention_bias:
            self.q_bias = _param(rngs, (nq, d), None, pd, ("q_heads", "head_dim"))
            self.k_bias = _param(rngs, (nkv, d), None, pd, ("kv_heads", "head_dim"))
            self.v_bias = _param(rngs, (nkv, d), None, pd, ("kv_heads", "head_dim"))
        if config.attention_out_bias:
            self.o_bias = _param(rngs, (h,), None, pd, ("embed",))
        self.config = config

    def _project(self, x: jax.Array, name: str, heads_axis: str) -> jax.Array:
        dt = x.dtype
        y = project(x, getattr(self, f"{name}_kernel")[...].astype(dt))
        if self.config.attention_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(dt)
        return constrain(y, ("batch", "length", heads_axis, None))

    def __call__(
        self,
        x: jax.Array,  # [B, T, H] compute dtype
        cos: jax.Array,
        sin: jax.Array,
        mask: AttentionMask,  # which key slots query t may attend
        cache: tuple[jax.Array, jax.Array, int, jax.Array] | None,  # (k_all, v_all, layer, index)
        prefix: tuple[jax.Array, jax.Array] | None = None,  # keys/values [B, P, Hkv, D] before this call's
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Output [B, T, H], and the updated cache (k_all, v_all) or, without a cache, this call's
        rotated keys and values [B, T, Hkv, D]."""
        cfg = self.config
        batch, length, _ = x.shape
        q = apply_rope(self._project(x, "q", "act_heads"), cos, sin)
        k = apply_rope(self._project(x, "k", "act_kv_heads"), cos, sin)
        v = self._project(x, "v", "act_kv_heads")
        new_cache = (k, v)
        if prefix is not None:
            k, v = jnp.concatenate([prefix[0], k], axis=1), jnp.concatenate([prefix[1], v], axis=1)
        if cache is not None:
            k_all, v_all, layer, index = cache
            k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), (layer, 0, index, 0, 0))
            v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), (layer, 0, index, 0, 0))
            new_cache = (k_all, v_all)
            k, v = k_all[layer].astype(x.dtype), v_all[layer].astype(x.dtype)
        # Grouped-query attention without repeating K/V: queries become [B, T, Hkv, G, D].
        groups = cfg.num_heads // cfg.num_kv_heads
        q = q.reshape(batch, length, cfg.num_kv_heads, groups, cfg.head_dim)
        out = attention(q, k, v, mask, implementation=cfg.attention, query_chunk=cfg.attention_query_chunk)
        out = out.reshape(batch, length, cfg.num_heads, cfg.head_dim)
        y = project(out, self.o_kernel[...].astype(x.dtype), in_dims=2)
        if cfg.attention_out_bias:
            y = y + self.o_bias[...].astype(x.dtype)
        return y, new_cache


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        h, f, pd = config.hidden_size, config.intermediate_size, config.params_dtype
        self.gate_kernel = _param(rngs, (h, f), h, pd, ("embed", "mlp"))
        self.up_kernel = _param(rngs, (h, f), h, pd, ("embed", "mlp"))
        self.down_kernel = _param(rngs, (f, h), f, pd, ("mlp", "embed"))
        self.chunk = config.mlp_chunk

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        kernels = tuple(k[...].astype(dt) for k in (self.gate_kernel, self.up_kernel, self.down_kernel))
        rows, length, width = x.shape
        step = _divisor_at_most(length, self.chunk // max(rows, 1)) if self.chunk else length
        if step >= length:
            return _mlp(x, *kernels)
        # Sequence chunks of `step` positions (all rows), one after the other, each recomputed in
        # the backward pass: the [tokens, intermediate] activations exist for one chunk at a time.
        chunks = jnp.swapaxes(x.reshape(rows, length // step, step, width), 0, 1)
        run = jax.checkpoint(lambda chunk: _mlp(chunk, *kernels))
        out = jax.lax.map(run, chunks)
        return constrain(jnp.swapaxes(out, 0, 1).reshape(rows, length, -1), ("batch", "length", "act_embed"))


def _mlp(x: jax.Array, gate_kernel: jax.Array, up_kernel: jax.Array, down_kernel: jax.Array) -> jax.Array:
    gate = project(x, gate_kernel)
    up = project(x, up_kernel)
    hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return project(hidden, down_kernel)


def _divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of n that is <= limit (at least 1)."""
    return max([d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0])


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        pd = config.params_dtype
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        self.attn = Attention(config, rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        self.mlp = MLP(config, rngs)

    def __call__(self, x, cos, sin, mask, cache, prefix=None):
        attn_out, new_cache = self.attn(self.input_norm(x), cos, sin, mask, cache, prefix)
        x = constrain(x + attn_out, ("batch", "length", "act_embed"))
        x = constrain(x + self.mlp(self.post_attn_norm(x)), ("batch", "length", "act_embed"))
        return x, new_cache


REMAT_POLICIES = {
    "full": None,  # jax.checkpoint's default: keep nothing but the layer's inputs
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_layer(fn, policy: str):
    """`fn` (a decoder-layer call taking the layer first) rematerialised under `policy`: "none"
    returns it unchanged; otherwise the forward pass keeps only the layer's inputs and what the
    policy saves (`dots`: every matmul output; `dots_no_batch`: matmuls without batch dimensions,
    i.e. the projections but not the attention scores), and the backward pass recomputes the rest
    one layer at a time."""
    if policy == "none":
        return fn
    return nnx.remat(fn, policy=REMAT_POLICIES[policy])


def _layer_no_cache(layer: DecoderLayer, x, cos, sin, mask):
    return layer(x, cos, sin, mask, None)[0]


def _layer_with_prefix(layer: DecoderLayer, x, cos, sin, mask, prefix):
    return layer(x, cos, sin, mask, None, prefix)


def _rope(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg))
    return jnp.cos(angles), jnp.sin(angles)


class Transformer(nnx.Module):
    """Decoder-only language model. See the module docstring for the parameter layout."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = config.params_dtype
        embed = jax.random.normal(rngs.params(), (config.vocab_size, config.hidden_size), jnp.float32) * 0.02
        self.embed = nnx.Param(embed.astype(pd), logical_axes=("vocab", "embed"))
        self.layers = nnx.List([DecoderLayer(config, rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        if not config.tie_word_embeddings:
            self.lm_head = _param(rngs, (config.hidden_size, config.vocab_size), config.hidden_size, pd,
                                  ("embed", "vocab"))

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        *,
        attention_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        cfg = self.config
        dt = cfg.compute_dtype
        batch, length = tokens.shape
        tokens = tokens.astype(jnp.int32)
        valid = jnp.ones((batch, length), jnp.bool_) if attention_mask is None else attention_mask.astype(jnp.bool_)
        start = jnp.zeros((), jnp.int32) if cache is None else cache.index
        if positions is None:
            positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))

        if cache is None:
            key_valid = None if attention_mask is None else valid
            mask = AttentionMask(key_valid=key_valid, q_segments=segment_ids, k_segments=segment_ids)
            slot_mask = None
        else:
            if segment_ids is not None:
                raise TailorError("segment_ids (packed sequences) cannot be combined with a KV cache")
            slot_mask = jax.lax.dynamic_update_slice(cache.mask, valid, (0, start))
            mask = AttentionMask(key_valid=slot_mask, cache_index=start)

        cos, sin = _rope(cfg, positions)
        x = embed_lookup(self.embed[...], tokens).astype(dt)
        x = constrain(x, ("batch", "length", "act_embed"))
        k_all = v_all = None
        if cache is not None:
            k_all, v_all = cache.k, cache.v
        for i, layer in enumerate(self.layers):
            if cache is not None:
                x, (k_all, v_all) = layer(x, cos, sin, mask, (k_all, v_all, i, start))
            else:
                x = remat_layer(_layer_no_cache, cfg.remat)(layer, x, cos, sin, mask)
        hidden = self.final_norm(x)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=k_all, v=v_all, mask=slot_mask, index=start + length)
        if return_hidden:
            return hidden, new_cache
        return self.logits(hidden), new_cache

    def shared_prefix_forward(
        self,
        prefix_tokens: jax.Array,  # [U, P] distinct prompts, left-padded
        prefix_positions: jax.Array,  # [U, P]
        prefix_mask: jax.Array,  # bool [U, P]
        row_prefix: jax.Array,  # int [R]: the prompt row r continues
        tokens: jax.Array,  # [R, C] continuations
        positions: jax.Array,  # [R, C]
        mask: jax.Array,  # bool [R, C]
    ) -> tuple[jax.Array, jax.Array]:
        """Final-norm hidden states of the prompts [U, P, H] and of their continuations [R, C, H].

        Equal to running each row `prompt | continuation` through the model, but every prompt is
        computed once however many rows continue it (G completions per prompt in GRPO): each layer
        runs the prompts, then the continuations attend their prompt's keys/values and their own.
        Gradients flow into the shared prompt computation from every row that reads it.
        """
        cfg = self.config
        dt = cfg.compute_dtype
        u, p = prefix_tokens.shape
        rows, length = tokens.shape
        prefix_mask, mask = prefix_mask.astype(jnp.bool_), mask.astype(jnp.bool_)
        causal_p = AttentionMask(key_valid=prefix_mask)
        # A continuation's query t is key slot p + t after its prompt's p slots: causal with offset p.
        row_mask = AttentionMask(key_valid=jnp.concatenate([prefix_mask[row_prefix], mask], axis=1), static_offset=p)
        cos_p, sin_p = _rope(cfg, prefix_positions)
        cos, sin = _rope(cfg, positions)
        # One lookup for prompts and continuations: one embedding gradient, not two summed.
        flat = jnp.concatenate([prefix_tokens.reshape(-1), tokens.reshape(-1)]).astype(jnp.int32)
        embedded = embed_lookup(self.embed[...], flat).astype(dt)
        xp = constrain(embedded[: u * p].reshape(u, p, -1), ("batch", "length", "act_embed"))
        x = constrain(embedded[u * p :].reshape(rows, length, -1), ("batch", "length", "act_embed"))
        run = remat_layer(_layer_with_prefix, cfg.remat)
        for layer in self.layers:
            xp, (k, v) = run(layer, xp, cos_p, sin_p, causal_p, None)
            x, _ = run(layer, x, cos, sin, row_mask, (k[row_prefix], v[row_prefix]))
        return self.final_norm(xp), self.final_norm(x)

    def hidden_states(self, tokens: jax.Array, positions: jax.Array | None = None, **kwargs) -> jax.Array:
        """Final-norm hidden states [B, T, H] (no LM head; see `model.logprobs` for log-probs)."""
        return self(tokens, positions, return_hidden=True, **kwargs)[0]

    def head_weight(self, dtype=None) -> tuple[jax.Array, bool]:
        """The LM head as (weight, transposed), cast to `dtype` (default: the compute dtype):
        the input embedding [V, H] with transposed=True when tied, else lm_head [H, V]."""
        dtype = self.config.compute_dtype if dtype is None else dtype
        if self.config.tie_word_embeddings:
            return self.embed[...].astype(dtype), True
        return self.lm_head[...].astype(dtype), False

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits [B, T, V] from final-norm hidden states [B, T, H]."""
        if self.config.tie_word_embeddings:
            weight = self.embed[...].astype(hidden.dtype)
            out = project(hidden, weight, transposed=True, preferred_element_type=jnp.float32)
        else:
            weight = self.lm_head[...].astype(hidden.dtype)
            out = project(hidden, weight, preferred_element_type=jnp.float32)
        return constrain(out, ("batch", "length", "act_vocab"))


def create_model(
    config: ModelConfig, *, seed: int = 0, mesh: Mesh | None = None, rules: Rules | None = None
) -> Transformer:
    """A randomly initialised model; with `mesh`, every parameter is created directly in its sharding."""
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(seed))))
    shardings = state_shardings(abstract_state, mesh, rules) if mesh is not None else None
    # One compiled program instead of one dispatch per parameter.
    init = jax.jit(lambda: nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))[1], out_shardings=shardings)
    return nnx.merge(graphdef, init())


def shard_model(model: Transformer, mesh: Mesh, rules: Rules | None = None) -> Transformer:
    """A copy of `model` whose parameters are placed by their logical axes on `mesh`."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, shard_state(state, mesh, rules))
