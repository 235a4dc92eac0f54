"""Token log-probabilities from final hidden states and the LM head, a chunk of tokens at a time.

The one place the project turns hidden states into log p(token): the SFT loss and its accuracy,
the GRPO loss (trainer, old and reference log-probs, entropy), evaluation scoring and the Tailor
pipeline's scoring all call `token_logprobs`. The float32 logits of a whole batch, [rows, T, V],
are never built: the sequence is cut into chunks of about `chunk_tokens` tokens (all rows
together), and each chunk's logits [rows, step, V] are made, reduced to per-token numbers and
dropped before the next chunk (vocabulary tiling, as in Cut Cross-Entropy or MaxText). The
backward pass (a custom VJP) recomputes each chunk's logits the same way and accumulates the
LM-head gradient in float32, so a gradient keeps no chunk's logits alive either: at qwen2.5-0.5b
shapes one [4, 1024, V] float32 logits array alone is 2.3 GiB, a chunk of 1024 tokens 0.6 GiB.

Numerics match the plain computation (`log_softmax(hidden @ W / temperature)`): the same
float32 matmul (compute-dtype inputs, float32 accumulation) and float32 softmax statistics.
The sampler's per-step logits [B, V] are small and already built; `logprobs_from_logits` serves them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from tailor_jax.parallel.sharding import constrain

DEFAULT_CHUNK_TOKENS = 1024  # tokens per chunk, all rows together (see docs/gpu.md: memory vs speed)


class TokenStats(NamedTuple):
    """Per-token results [rows, T] (float32); entropy / correct are None unless asked for."""

    logp: jax.Array  # log softmax(logits / temperature)[target]
    entropy: jax.Array | None  # entropy of softmax(logits / temperature)
    correct: jax.Array | None  # 1.0 where argmax(logits) == target (the first maximum on ties), else 0.0


def logprobs_from_logits(logits: jax.Array, targets: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
    """log softmax(logits / temperature)[targets] for logits already built: [..., V] x [...] -> [...] float32."""
    scaled = logits.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(scaled, targets[..., None].astype(jnp.int32), axis=-1, mode="clip")[..., 0]
    return picked - jax.nn.logsumexp(scaled, axis=-1)


def chunk_length(rows: int, length: int, chunk_tokens: int) -> int:
    """Sequence positions per chunk: about `chunk_tokens` tokens over all rows, at least 1, at most `length`."""
    return max(1, min(length, chunk_tokens // max(rows, 1)))


def token_logprobs(
    hidden: jax.Array,
    weight: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    transposed: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    entropy: bool = False,
    correct: bool = False,
) -> TokenStats:
    """Log-probabilities of `targets` [rows, T] (int) under softmax(hidden @ W / temperature).

    hidden: final-norm hidden states [rows, T, H] in the compute dtype. weight: the LM head in the
    compute dtype, [H, V], or [V, H] with `transposed` (tied input embeddings). Differentiable in
    `hidden` and `weight` (through logp and entropy; `correct` carries no gradient). Targets must
    lie in [0, V); positions a loss masks out may hold any such id.
    """
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(f"hidden [rows, T, H] {hidden.shape} and targets [rows, T] {targets.shape} do not match")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    rows, length = targets.shape
    step = chunk_length(rows, length, chunk_tokens)
    out = _tiled(hidden, weight, targets.astype(jnp.int32), float(temperature), bool(transposed), step,
                 bool(entropy), bool(correct))
    return TokenStats(out[0], out[1] if entropy else None, out[2] if correct else None)


def model_token_logprobs(model, hidden: jax.Array, targets: jax.Array, **options) -> TokenStats:
    """`token_logprobs` with `model`'s LM head (tied or not; see `Transformer.head_weight`)."""
    weight, transposed = model.head_weight(hidden.dtype)
    return token_logprobs(hidden, weight, targets, transposed=transposed, **options)


# ---------------------------------------------------------------------------------------
# The chunked computation and its custom VJP.
def _project(x: jax.Array, weight: jax.Array, transposed: bool) -> jax.Array:
    """float32 logits [rows, step, V] of x [rows, step, H] (the model's own matmul layout)."""
    from tailor_jax.model.transformer import project

    logits = project(x, weight, transposed=transposed, preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "length", "act_vocab"))


def _padded(x: jax.Array, total: int) -> jax.Array:
    extra = total - x.shape[1]
    return x if extra == 0 else jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))


def _chunk(x: jax.Array, i: jax.Array, step: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, i * step, step, axis=1)


def _scaled_logits(h, weight, temperature, transposed):
    logits = _project(h, weight, transposed)
    scaled = logits if temperature == 1.0 else logits / temperature
    return logits, scaled, jax.nn.logsumexp(scaled, axis=-1)


def _forward(hidden, weight, targets, temperature, transposed, step, want_entropy, want_correct):
    rows, length = targets.shape
    n = -(-length // step)
    hidden_p, targets_p = _padded(hidden, n * step), _padded(targets, n * step)

    def one(_, i):
        h, t = _chunk(hidden_p, i, step), _chunk(targets_p, i, step)
        logits, scaled, lse = _scaled_logits(h, weight, temperature, transposed)
        picked = jnp.take_along_axis(scaled, t[..., None], axis=-1, mode="clip")[..., 0]
        outs = [picked - lse, lse]
        if want_entropy:
            probs = jnp.exp(scaled - lse[..., None])
            outs.append(lse - jnp.sum(probs * scaled, axis=-1))
        if want_correct:
            outs.append((jnp.argmax(logits, axis=-1) == t).astype(jnp.float32))
        return None, tuple(outs)

    _, stacked = jax.lax.scan(one, None, jnp.arange(n))
    # [n, rows, step] -> [rows, T]
    unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(rows, n * step)[:, :length]  # noqa: E731
    outs = [unchunk(x) for x in stacked]
    logp, lse = outs[0], outs[1]
    ent = outs[2] if want_entropy else jnp.zeros((0,), jnp.float32)
    cor = outs[-1] if want_correct else jnp.zeros((0,), jnp.float32)
    return (logp, ent, cor), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _tiled(hidden, weight, targets, temperature, transposed, step, want_entropy, want_correct):
    return _forward(hidden, weight, targets, temperature, transposed, step, want_entropy, want_correct)[0]


def _tiled_fwd(hidden, weight, targets, temperature, transposed, step, want_entropy, want_correct):
    # symbolic_zeros: the arguments come as CustomVJPPrimal(value, perturbed)
    hidden, weight, targets = hidden.value, weight.value, targets.value
    outs, lse = _forward(hidden, weight, targets, temperature, transposed, step, want_entropy, want_correct)
    return outs, (hidden, weight, targets, lse)


def _tiled_bwd(temperature, transposed, step, want_entropy, want_correct, residuals, cotangents):
    hidden, weight, targets, lse = residuals
    g_logp, g_ent, _ = cotangents
    # An output nobody differentiates (e.g. the entropy as a metric) arrives as a symbolic zero: skip its term.
    use_ent = want_entropy and not isinstance(g_ent, SymbolicZero)
    if isinstance(g_logp, SymbolicZero):
        g_logp = jnp.zeros(targets.shape, jnp.float32)
    length = targets.shape[1]
    n = -(-length // step)
    total = n * step
    hidden_p, targets_p, lse_p = _padded(hidden, total), _padded(targets, total), _padded(lse, total)
    g_logp_p = _padded(g_logp.astype(jnp.float32), total)  # zero cotangent on the padding
    g_ent_p = _padded(g_ent.astype(jnp.float32), total) if use_ent else None
    vocab = weight.shape[0] if transposed else weight.shape[-1]

    def one(carry, i):
        d_weight, d_hidden = carry
        h, t, lse_c = _chunk(hidden_p, i, step), _chunk(targets_p, i, step), _chunk(lse_p, i, step)
        _, scaled, _ = _scaled_logits(h, weight, temperature, transposed)
        logp_all = scaled - lse_c[..., None]
        probs = jnp.exp(logp_all)
        onehot = (jnp.arange(vocab, dtype=jnp.int32) == t[..., None]).astype(jnp.float32)
        d_scaled = _chunk(g_logp_p, i, step)[..., None] * (onehot - probs)
        if use_ent:  # dH/ds_j = -p_j (log p_j + H)
            ent = -jnp.sum(probs * logp_all, axis=-1, keepdims=True)
            d_scaled = d_scaled - _chunk(g_ent_p, i, step)[..., None] * probs * (logp_all + ent)
        d_logits = (d_scaled if temperature == 1.0 else d_scaled / temperature).astype(weight.dtype)
        # d hidden = d_logits @ W^T; d W = h^T @ d_logits (float32 accumulation over chunks).
        # As 2-D matmuls: XLA:CPU runs them faster than einsums with free batch axes (see `project`).
        flat_d, flat_h = d_logits.reshape(-1, vocab), h.reshape(-1, h.shape[-1])
        d_h = jax.lax.dot_general(flat_d, weight, (((1,), (0 if transposed else 1,)), ((), ())),
                                  preferred_element_type=jnp.float32).reshape(h.shape)
        first, second = (flat_d, flat_h) if transposed else (flat_h, flat_d)
        d_w = jax.lax.dot_general(first, second, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        d_hidden = jax.lax.dynamic_update_slice_in_dim(d_hidden, d_h.astype(hidden.dtype), i * step, axis=1)
        return (d_weight + d_w, d_hidden), None

    init = (jnp.zeros(weight.shape, jnp.float32), jnp.zeros(hidden_p.shape, hidden.dtype))
    (d_weight, d_hidden), _ = jax.lax.scan(one, init, jnp.arange(n))
    return d_hidden[:, :length], d_weight.astype(weight.dtype), None


_tiled.defvjp(_tiled_fwd, _tiled_bwd, symbolic_zeros=True)
