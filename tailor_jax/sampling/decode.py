"""One decode step over a shared prompt cache plus a per-row completion cache.

With group sampling the G rows of a prompt have the same prompt keys/values. Instead of copying
them G times into one cache (and reading every copy at every step), the prompt cache stays at B
rows and each of the B * G rows keeps only its own completion keys/values. Attention is one
softmax over both parts. Decode on CPU is bound by reading the cache, so this halves or better
the attention cost of the `sample` workload.

The step reuses the model's own parameters, norms, rotary embedding and lm head. A decode step
multiplies only a few rows, so on CPU its time goes to the number of operations rather than to
arithmetic: `fuse_decode_weights` joins each layer's q/k/v kernels into one and its gate/up
kernels into one, once per sampler call, so a layer runs two projections instead of five.
Only the attention and MLP wiring for one new token per row is written here. Tests check it against Hugging Face
greedy decoding and against the model's own cached path (`Sampler(..., share_prompt_cache=False)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tailor_jax.model import Transformer
from tailor_jax.model.transformer import apply_rope, project, rope_inv_freq
from tailor_jax.parallel.sharding import constrain


@struct.dataclass
class PromptCache:
    """Keys/values of the B distinct prompts, in the layout the decode step reads fastest."""

    k: jax.Array  # [layers, B, kv_heads, head_dim, P]
    v: jax.Array  # [layers, B, kv_heads, P, head_dim]
    mask: jax.Array  # bool [B, P]


@struct.dataclass
class CompletionCache:
    """Keys/values of the generated tokens of every row; slot `index` is written next."""

    k: tuple[jax.Array, ...]  # per layer [R, kv_heads, head_dim, N]
    v: tuple[jax.Array, ...]  # per layer [R, kv_heads, N, head_dim]
    index: jax.Array  # int32 scalar


def prompt_cache_from_model_cache(k: jax.Array, v: jax.Array, mask: jax.Array) -> PromptCache:
    """From the model's cache layout k/v [layers, B, P, kv_heads, head_dim] after prefill."""
    return PromptCache(k=jnp.transpose(k, (0, 1, 3, 4, 2)), v=jnp.transpose(v, (0, 1, 3, 2, 4)), mask=mask)


def empty_completion_cache(model: Transformer, rows: int, capacity: int, dtype) -> CompletionCache:
    cfg = model.config
    shape = (rows, cfg.num_kv_heads)
    # One buffer per layer (not one stacked array): each layer's in-place write then never waits
    # on reads of another layer, and XLA inserts no copies of the cache in the loop.
    return CompletionCache(
        k=tuple(jnp.zeros(shape + (cfg.head_dim, capacity), dtype) for _ in range(cfg.num_layers)),
        v=tuple(jnp.zeros(shape + (capacity, cfg.head_dim), dtype) for _ in range(cfg.num_layers)),
        index=jnp.zeros((), jnp.int32),
    )


def grow_completion_cache(cache: CompletionCache, capacity: int) -> CompletionCache:
    extra = capacity - cache.k[0].shape[-1]
    if extra <= 0:
        return cache
    return CompletionCache(
        k=tuple(jnp.pad(k, ((0, 0),) * 3 + ((0, extra),)) for k in cache.k),
        v=tuple(jnp.pad(v, ((0, 0),) * 2 + ((0, extra), (0, 0))) for v in cache.v),
        index=cache.index,
    )


@struct.dataclass
class DecodeWeights:
    """Per layer: q/k/v kernels joined per KV head, [H, Hkv, G + 2, D] (q heads of the group, then
    k, then v; biases [Hkv, G + 2, D] or None), and gate/up kernels joined, [H, 2, F]. Heads and
    MLP columns keep their own axes, so a tensor-parallel layout of the model carries over."""

    qkv: tuple[jax.Array, ...]
    qkv_bias: tuple[jax.Array, ...] | None
    gate_up: tuple[jax.Array, ...]


def _per_kv_head(x: jax.Array, kv_heads: int, axis: int) -> jax.Array:
    """Split the heads axis of x into [kv_heads, heads // kv_heads] (head n -> kv head n // G)."""
    return x.reshape(x.shape[:axis] + (kv_heads, x.shape[axis] // kv_heads) + x.shape[axis + 1 :])


def fuse_decode_weights(model: Transformer) -> DecodeWeights:
    cfg = model.config
    kv = cfg.num_kv_heads
    qkv, biases, gate_up = [], [], []
    for layer in model.layers:
        attn = layer.attn
        q = _per_kv_head(attn.q_kernel[...], kv, 1)  # [H, Hkv, G, D]
        qkv.append(constrain(
            jnp.concatenate([q, attn.k_kernel[...][:, :, None], attn.v_kernel[...][:, :, None]], axis=2),
            ("embed", "kv_heads", None, "head_dim"),
        ))
        if cfg.attention_bias:
            qb = _per_kv_head(attn.q_bias[...], kv, 0)
            biases.append(jnp.concatenate([qb, attn.k_bias[...][:, None], attn.v_bias[...][:, None]], axis=1))
        mlp = layer.mlp
        gate_up.append(constrain(jnp.stack([mlp.gate_kernel[...], mlp.up_kernel[...]], axis=1), ("embed", None, "mlp")))
    return DecodeWeights(qkv=tuple(qkv), qkv_bias=tuple(biases) if cfg.attention_bias else None, gate_up=tuple(gate_up))


def decode_step(
    model: Transformer,
    weights: DecodeWeights,
    tokens: jax.Array,  # int32 [R]
    positions: jax.Array,  # int32 [R]
    prompt: PromptCache,
    completion: CompletionCache,
) -> tuple[jax.Array, CompletionCache]:
    """Logits float32 [R, V] for one new token per row, and the completion cache with it written.

    Row r belongs to prompt r // G (G = R / B): it attends the valid slots of that prompt's cache
    and its own completion slots [0, index].
    """
    cfg = model.config
    dt = cfg.compute_dtype
    rows = tokens.shape[0]
    batch = prompt.mask.shape[0]
    group = rows // batch
    kv_heads, q_per_kv, head_dim = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    index = completion.index
    capacity = completion.k[0].shape[-1]
    own_valid = jnp.arange(capacity, dtype=jnp.int32) <= index  # [N], same for every row
    scale = head_dim**-0.5

    angles = positions.astype(jnp.float32)[:, None, None] * jnp.asarray(rope_inv_freq(cfg))
    cos, sin = jnp.cos(angles), jnp.sin(angles)  # [R, 1, D/2]
    x = jnp.take(model.embed[...], tokens[:, None], axis=0).astype(dt)  # [R, 1, H]
    x = constrain(x, ("batch", "length", "act_embed"))
    new_k, new_v = [], []
    for i, layer in enumerate(model.layers):
        attn = layer.attn
        h = layer.input_norm(x)
        qkv = project(h, weights.qkv[i].astype(dt))  # [R, 1, Hkv, G + 2, D]
        if cfg.attention_bias:
            qkv = qkv + weights.qkv_bias[i].astype(dt)
        q = apply_rope(qkv[:, :, :, :q_per_kv].reshape(rows, 1, cfg.num_heads, head_dim), cos, sin)[:, 0]
        k = apply_rope(qkv[:, :, :, q_per_kv], cos, sin)[:, 0]  # [R, Hkv, D]
        v = qkv[:, 0, :, q_per_kv + 1]
        own_k = jax.lax.dynamic_update_slice(completion.k[i], k[:, :, :, None].astype(completion.k[i].dtype),
                                             (0, 0, 0, index))
        own_v = jax.lax.dynamic_update_slice(completion.v[i], v[:, :, None, :].astype(completion.v[i].dtype),
                                             (0, 0, index, 0))
        new_k.append(own_k)
        new_v.append(own_v)
        q = q.reshape(rows, kv_heads, q_per_kv, head_dim).astype(jnp.float32) * scale

        # Prompt part: the G rows of a prompt share its keys -> one [G * q_per_kv, D] x [D, P] product.
        q_grouped = q.reshape(batch, group, kv_heads, q_per_kv, head_dim)
        prompt_scores = jnp.einsum("bjkgd,bkdp->bjkgp", q_grouped, prompt.k[i].astype(jnp.float32))
        prompt_scores = jnp.where(prompt.mask[:, None, None, None, :], prompt_scores, -jnp.inf)
        # Own part: multiply-and-reduce (a matrix-vector product per row and head).
        own_scores = jnp.sum(q[..., None] * own_k.astype(jnp.float32)[:, :, None], axis=-2)  # [R, Hkv, g, N]
        own_scores = jnp.where(own_valid, own_scores, -jnp.inf)

        prompt_scores = prompt_scores.reshape(rows, kv_heads, q_per_kv, -1)
        top = jnp.maximum(jnp.max(prompt_scores, axis=-1), jnp.max(own_scores, axis=-1))[..., None]
        prompt_weights = jnp.exp(prompt_scores - top)
        own_weights = jnp.exp(own_scores - top)
        norm = jnp.sum(prompt_weights, axis=-1) + jnp.sum(own_weights, axis=-1)  # [R, Hkv, g]
        prompt_out = jnp.einsum(
            "bjkgp,bkpd->bjkgd", prompt_weights.reshape(batch, group, kv_heads, q_per_kv, -1),
            prompt.v[i].astype(jnp.float32),
        ).reshape(rows, kv_heads, q_per_kv, head_dim)
        own_out = jnp.sum(own_weights[..., None] * own_v.astype(jnp.float32)[:, :, None], axis=-2)
        out = ((prompt_out + own_out) / norm[..., None]).astype(dt).reshape(rows, 1, cfg.num_heads, head_dim)

        y = project(out, attn.o_kernel[...].astype(dt), in_dims=2)
        if cfg.attention_out_bias:
            y = y + attn.o_bias[...].astype(dt)
        x = constrain(x + y, ("batch", "length", "act_embed"))
        gate_up = project(layer.post_attn_norm(x), weights.gate_up[i].astype(dt))
        hidden = constrain(jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1], ("batch", "length", "act_mlp"))
        x = constrain(x + project(hidden, layer.mlp.down_kernel[...].astype(dt)),
                      ("batch", "length", "act_embed"))
    logits = model.logits(model.final_norm(x))[:, 0]
    return logits, CompletionCache(k=tuple(new_k), v=tuple(new_v), index=index + 1)
