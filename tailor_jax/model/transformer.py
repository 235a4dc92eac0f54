"""Flax NNX decoder for the Qwen2 / Llama 3 family, with a KV cache for decoding.

One layer definition serves every use: training and prefill (`DecoderLayer.__call__`), and the
sampler's decode step over a prompt cache shared by a group of rows (`Transformer.decode_step`,
whose caches sampling/decode.py keeps); both run the same norm/attention/MLP/residual wiring.

Parameter layout (logical axes in brackets; HF weights are transposed/reshaped into it on load):
  embed [vocab, embed], lm_head [embed, vocab] (untied only), final_norm [norm]
  layers[i].attn: q_kernel [embed, q_heads, head_dim], k/v_kernel [embed, kv_heads, head_dim],
                  o_kernel [q_heads, head_dim, embed], optional q/k/v_bias [heads, head_dim], o_bias [embed]
  layers[i].mlp: gate_kernel, up_kernel [embed, mlp], down_kernel [mlp, embed]
  layers[i].input_norm, post_attn_norm [norm]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from tailor_jax.errors import TailorError
from tailor_jax.model.attention import AttentionMask, attention, shared_prompt_attention
from tailor_jax.model.config import ModelConfig
from tailor_jax.model.projection import project
from tailor_jax.model.rope import apply_rope, rotary
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


@struct.dataclass
class FusedWeights:
    """One layer's projections joined for decoding, where a step multiplies only a few rows and
    its CPU time goes to the number of operations: two projections instead of five. Heads and MLP
    columns keep their own axes, so a tensor-parallel layout of the model carries over."""

    qkv: jax.Array  # [H, Hkv, G + 2, D] (`Attention.fused_qkv`)
    qkv_bias: jax.Array | None  # [Hkv, G + 2, D] or None
    gate_up: jax.Array  # [H, 2, F] (`MLP.fused_gate_up`)


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

    def _qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array, fused: FusedWeights | None = None):
        """Rotated queries [B, T, Hkv, G, D] (grouped by KV head) and keys, values [B, T, Hkv, D]:
        three projections, or with `fused` (decoding) one into the joined q/k/v kernel."""
        cfg = self.config
        batch, length, _ = x.shape
        groups = cfg.num_heads // cfg.num_kv_heads
        if fused is None:
            q = self._project(x, "q", "act_heads")
            k = self._project(x, "k", "act_kv_heads")
            v = self._project(x, "v", "act_kv_heads")
        else:
            qkv = project(x, fused.qkv.astype(x.dtype))  # [B, T, Hkv, G + 2, D]
            if cfg.attention_bias:
                qkv = qkv + fused.qkv_bias.astype(x.dtype)
            q = qkv[:, :, :, :groups].reshape(batch, length, cfg.num_heads, cfg.head_dim)
            k, v = qkv[:, :, :, groups], qkv[:, :, :, groups + 1]
        q = apply_rope(q, cos, sin).reshape(batch, length, cfg.num_kv_heads, groups, cfg.head_dim)
        return q, apply_rope(k, cos, sin), v

    def _output(self, out: jax.Array) -> jax.Array:
        """The output projection of the attention result [B, T, Hkv, G, D] -> [B, T, H]."""
        cfg = self.config
        out = out.reshape(out.shape[0], out.shape[1], cfg.num_heads, cfg.head_dim)
        y = project(out, self.o_kernel[...].astype(out.dtype), in_dims=2)
        if cfg.attention_out_bias:
            y = y + self.o_bias[...].astype(out.dtype)
        return y

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
        q, k, v = self._qkv(x, cos, sin)
        new_cache = (k, v)
        if prefix is not None:
            k, v = jnp.concatenate([prefix[0], k], axis=1), jnp.concatenate([prefix[1], v], axis=1)
        if cache is not None:
            k_all, v_all, layer, index = cache
            k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), (layer, 0, index, 0, 0))
            v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), (layer, 0, index, 0, 0))
            new_cache = (k_all, v_all)
            k, v = k_all[layer].astype(x.dtype), v_all[layer].astype(x.dtype)
        # Grouped-query attention without repeating K/V: queries are [B, T, Hkv, G, D].
        out = attention(q, k, v, mask, implementation=cfg.attention, query_chunk=cfg.attention_query_chunk)
        return self._output(out), new_cache

    def decode_step(
        self,
        x: jax.Array,  # [R, 1, H]: one new token per row
        cos: jax.Array,
        sin: jax.Array,
        fused: FusedWeights,
        prompt: tuple[jax.Array, jax.Array, jax.Array],  # this layer's shared prompt cache (k, v, mask)
        own: tuple[jax.Array, jax.Array],  # this layer's completion cache (k, v) of every row
        index: jax.Array,  # int32 scalar: the completion slot this token's key/value go to
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Output [R, 1, H] over the shared prompt cache plus each row's completion cache (layouts
        at `shared_prompt_attention`), and the completion cache with this token written."""
        q, k, v = self._qkv(x, cos, sin, fused)
        own_k, own_v = own
        own_k = jax.lax.dynamic_update_slice(own_k, k[:, 0, :, :, None].astype(own_k.dtype), (0, 0, 0, index))
        own_v = jax.lax.dynamic_update_slice(own_v, v[:, 0, :, None, :].astype(own_v.dtype), (0, 0, index, 0))
        own_valid = jnp.arange(own_k.shape[-1], dtype=jnp.int32) <= index
        out = shared_prompt_attention(q[:, 0], *prompt, own_k, own_v, own_valid)
        return self._output(out[:, None]), (own_k, own_v)

    def fused_qkv(self) -> tuple[jax.Array, jax.Array | None]:
        """q/k/v kernels joined per KV head, [H, Hkv, G + 2, D] (the G query heads of the group,
        then k, then v), and the biases likewise [Hkv, G + 2, D] (None without biases)."""
        kv = self.config.num_kv_heads
        q = _per_kv_head(self.q_kernel[...], kv, 1)  # [H, Hkv, G, D]
        kernel = jnp.concatenate([q, self.k_kernel[...][:, :, None], self.v_kernel[...][:, :, None]], axis=2)
        kernel = constrain(kernel, ("embed", "kv_heads", None, "head_dim"))
        if not self.config.attention_bias:
            return kernel, None
        qb = _per_kv_head(self.q_bias[...], kv, 0)
        return kernel, jnp.concatenate([qb, self.k_bias[...][:, None], self.v_bias[...][:, None]], axis=1)


def _per_kv_head(x: jax.Array, kv_heads: int, axis: int) -> jax.Array:
    """Split the heads axis of x into [kv_heads, heads // kv_heads] (head n -> kv head n // G)."""
    return x.reshape(x.shape[:axis] + (kv_heads, x.shape[axis] // kv_heads) + x.shape[axis + 1 :])


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        h, f, pd = config.hidden_size, config.intermediate_size, config.params_dtype
        self.gate_kernel = _param(rngs, (h, f), h, pd, ("embed", "mlp"))
        self.up_kernel = _param(rngs, (h, f), h, pd, ("embed", "mlp"))
        self.down_kernel = _param(rngs, (f, h), f, pd, ("mlp", "embed"))
        self.chunk = config.mlp_chunk

    def __call__(self, x: jax.Array, gate_up: jax.Array | None = None) -> jax.Array:
        """`gate_up` (decoding): the gate and up kernels joined (`fused_gate_up`), one projection
        instead of two."""
        dt = x.dtype
        kernels = tuple(k[...].astype(dt) for k in (self.gate_kernel, self.up_kernel, self.down_kernel))
        if gate_up is not None:
            return _mlp(x, *kernels, gate_up=gate_up.astype(dt))
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

    def fused_gate_up(self) -> jax.Array:
        """The gate and up kernels joined, [H, 2, F] (MLP columns keep their own axis)."""
        return constrain(jnp.stack([self.gate_kernel[...], self.up_kernel[...]], axis=1), ("embed", None, "mlp"))


def _mlp(x: jax.Array, gate_kernel: jax.Array, up_kernel: jax.Array, down_kernel: jax.Array,
         gate_up: jax.Array | None = None) -> jax.Array:
    if gate_up is None:
        gate, up = project(x, gate_kernel), project(x, up_kernel)
    else:
        joined = project(x, gate_up)  # [..., 2, F]
        gate, up = joined[..., 0, :], joined[..., 1, :]
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
        """Training, prefill and the model's cached decoding (see `Attention.__call__`)."""
        return self._residual(x, lambda h: self.attn(h, cos, sin, mask, cache, prefix), self.mlp)

    def decode_step(self, x, cos, sin, fused: FusedWeights, prompt, own, index):
        """The sampler's decode step over a shared prompt cache (see `Attention.decode_step`)."""
        return self._residual(x, lambda h: self.attn.decode_step(h, cos, sin, fused, prompt, own, index),
                              lambda h: self.mlp(h, gate_up=fused.gate_up))

    def _residual(self, x, attend, feed_forward):
        """The layer's wiring, shared by every use: x + attend(norm(x)), then + feed_forward(norm(x)).
        `attend` returns (output, cache); returns (x, cache)."""
        attn_out, cache = attend(self.input_norm(x))
        x = constrain(x + attn_out, ("batch", "length", "act_embed"))
        x = constrain(x + feed_forward(self.post_attn_norm(x)), ("batch", "length", "act_embed"))
        return x, cache

    def fused_weights(self) -> FusedWeights:
        qkv, qkv_bias = self.attn.fused_qkv()
        return FusedWeights(qkv=qkv, qkv_bias=qkv_bias, gate_up=self.mlp.fused_gate_up())


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

        cos, sin = rotary(cfg, positions)
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
        cos_p, sin_p = rotary(cfg, prefix_positions)
        cos, sin = rotary(cfg, positions)
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

    def fused_decode_weights(self) -> tuple[FusedWeights, ...]:
        """Every layer's joined projections for `decode_step` (build once per sampler call)."""
        return tuple(layer.fused_weights() for layer in self.layers)

    def decode_step(
        self,
        tokens: jax.Array,  # int32 [R]: one new token per row
        positions: jax.Array,  # int32 [R]
        fused: tuple[FusedWeights, ...],  # `fused_decode_weights()`
        prompt: tuple[jax.Array, jax.Array, jax.Array],  # k [layers, B, Hkv, D, P], v [layers, B, Hkv, P, D], mask [B, P]
        own: tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]],  # per layer k [R, Hkv, D, N], v [R, Hkv, N, D]
        index: jax.Array,  # int32 scalar: the completion slot to write
    ) -> tuple[jax.Array, tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]]:
        """Logits float32 [R, V] for one new token per row after a prompt cache shared by the
        G = R / B rows of each prompt (row r continues prompt r // G), and the completion caches
        with this token written at `index`. Row r attends the valid slots of its prompt and its
        own completion slots [0, index]. The sampler's default decode (sampling/decode.py)."""
        prompt_k, prompt_v, prompt_mask = prompt
        cos, sin = rotary(self.config, positions[:, None])
        x = embed_lookup(self.embed[...], tokens[:, None].astype(jnp.int32)).astype(self.config.compute_dtype)
        x = constrain(x, ("batch", "length", "act_embed"))
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer.decode_step(x, cos, sin, fused[i], (prompt_k[i], prompt_v[i], prompt_mask),
                                          (own[0][i], own[1][i]), index)
            new_k.append(k)
            new_v.append(v)
        return self.logits(self.final_norm(x))[:, 0], (tuple(new_k), tuple(new_v))

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
