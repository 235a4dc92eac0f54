"""The caches of the sampler's decode loop: a shared prompt cache plus a per-row completion cache.

With group sampling the G rows of a prompt have the same prompt keys/values. Instead of copying
them G times into one cache (and reading every copy at every step), the prompt cache stays at B
rows and each of the B * G rows keeps only its own completion keys/values. Attention is one
softmax over both parts. Decode on CPU is bound by reading the cache, so this halves or better
the attention cost of the `sample` workload.

This module only holds, creates and grows those caches; the step itself is the model's own:
`Transformer.decode_step` runs each `DecoderLayer` (the same norm/attention/MLP/residual wiring
as training and prefill) with `Attention.decode_step` and `model.attention.shared_prompt_attention`.
A decode step multiplies only a few rows, so on CPU its time goes to the number of operations
rather than to arithmetic: `Transformer.fused_decode_weights` joins each layer's q/k/v kernels
into one and its gate/up kernels into one, once per sampler call, so a layer runs two
projections instead of five. Tests check the step against Hugging Face greedy decoding and
against the model's cached path (`Sampler(..., share_prompt_cache=False)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tailor_jax.model import Transformer
from tailor_jax.model.transformer import FusedWeights


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


def decode_step(
    model: Transformer,
    weights: tuple[FusedWeights, ...],  # `model.fused_decode_weights()`
    tokens: jax.Array,  # int32 [R]
    positions: jax.Array,  # int32 [R]
    prompt: PromptCache,
    completion: CompletionCache,
) -> tuple[jax.Array, CompletionCache]:
    """Logits float32 [R, V] for one new token per row, and the completion cache with it written.

    Row r belongs to prompt r // G (G = R / B): it attends the valid slots of that prompt's cache
    and its own completion slots [0, index].
    """
    logits, (k, v) = model.decode_step(tokens, positions, weights, (prompt.k, prompt.v, prompt.mask),
                                       (completion.k, completion.v), completion.index)
    return logits, CompletionCache(k=k, v=v, index=completion.index + 1)
