"""Token log-probabilities from final hidden states and the LM head, a chunk of tokens at a time.

The one place the project turns hidden states into log p(token): the SFT loss and its accuracy,
the GRPO loss (trainer, old and reference log-probs, entropy), evaluation scoring and the Tailor
pipeline's scoring all call `token_logprobs`. The float32 logits of a whole batch, [rows, T, V],
are never built: the sequence is cut into chunks of about `chunk_tokens` tokens (all rows
together), and each chunk's logits [rows, step, V] are made, reduced to per-token numbers and
dropped before the next chunk (vocabulary tiling, as in Cut Cross-Entropy or MaxText). The
backward pass (a custom VJP) runs over vocabulary tiles instead: each tile's logits [rows, T, tile]
(as many elements as one forward chunk) are recomputed from the saved log-sum-exp, and the tile's
rows of the LM-head gradient are finished at once, so a gradient keeps neither the logits nor a
float32 [V, H] accumulator alive: at qwen2.5-0.5b shapes one [4, 1024, V] float32 logits array
alone is 2.3 GiB, a forward chunk of 1024 tokens 0.6 GiB, a float32 [V, H] 0.5 GiB.

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

from tailor_jax.model.vocab_tiles import slice_rows, tile_starts, update_rows, zeros_when_ready
from tailor_jax.parallel.sharding import constrain

# Tokens per chunk, all rows together; None: as many as keep one float32 [tokens, V] block at about
# LOGITS_PER_CHUNK elements (220 tokens, 128 MiB, for Qwen2.5's vocabulary; the whole batch for a
# small vocabulary). See docs/gpu.md for memory vs speed.
DEFAULT_CHUNK_TOKENS: int | None = None
LOGITS_PER_CHUNK = 1 << 25


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


def chunk_length(rows: int, length: int, chunk_tokens: int | None, vocab: int | None = None) -> int:
    """Sequence positions per chunk: about `chunk_tokens` tokens over all rows (None: about
    LOGITS_PER_CHUNK / `vocab`), at least 1, at most `length`."""
    if chunk_tokens is None:
        if vocab is None:
            raise ValueError("chunk_length: chunk_tokens=None needs the vocabulary size")
        chunk_tokens = max(1, LOGITS_PER_CHUNK // vocab)
    return max(1, min(length, chunk_tokens // max(rows, 1)))


def token_logprobs(
    hidden: jax.Array,
    weight: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    transposed: bool = False,
    chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS,
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
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1 or None, got {chunk_tokens}")
    rows, length = targets.shape
    step = chunk_length(rows, length, chunk_tokens, weight.shape[0] if transposed else weight.shape[-1])
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
        logits, scaled, lse = _scaled_logits(h, _per_iteration(weight, i), temperature, transposed)
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
    return outs, (hidden, weight, targets, lse, outs[1])


def vocab_tile(rows: int, length: int, step: int, vocab: int) -> int:
    """Vocabulary columns per tile of the backward pass: its [rows, length, tile] float32 blocks hold
    about as many elements as one forward chunk [rows, step, V]."""
    return max(1, min(vocab, rows * step * vocab // max(rows * length, 1)))


def _per_iteration(x: jax.Array, i: jax.Array) -> jax.Array:
    """`x` tied to loop iteration `i`, so XLA cannot hoist its uses out of the loop: XLA:CPU widens a
    bfloat16 matmul operand to float32, and hoisted, that widened copy of the whole LM head
    (0.5 GiB at qwen2.5-0.5b) would live through the loop."""
    return jax.lax.optimization_barrier((x, i))[0]


def _tiled_bwd(temperature, transposed, step, want_entropy, want_correct, residuals, cotangents):
    """The gradient one vocabulary tile at a time (as Cut Cross-Entropy does): each tile's logits
    [rows, T, tile] are recomputed from the saved log-sum-exp, and its rows of the LM-head gradient
    are finished in one matmul over every token and written in the weight's dtype. So no float32
    [V, H] accumulator exists (at qwen2.5-0.5b it is 0.5 GiB), only the small float32 hidden-state
    gradient [rows, T, H] is accumulated over tiles."""
    hidden, weight, targets, lse, ent = residuals
    g_logp, g_ent, _ = cotangents
    # An output nobody differentiates (e.g. the entropy as a metric) arrives as a symbolic zero: skip its term.
    use_ent = want_entropy and not isinstance(g_ent, SymbolicZero)
    if isinstance(g_logp, SymbolicZero):
        g_logp = jnp.zeros(targets.shape, jnp.float32)
    rows, length = targets.shape
    vocab_axis = 0 if transposed else weight.ndim - 1
    vocab = weight.shape[vocab_axis]
    tile = vocab_tile(rows, length, step, vocab)
    n = -(-vocab // tile)
    g_logp = g_logp.astype(jnp.float32)[..., None]
    g_ent = g_ent.astype(jnp.float32)[..., None] if use_ent else None
    flat_h = hidden.reshape(-1, hidden.shape[-1])

    def one(carry, i):
        d_weight, d_hidden = carry
        # The last tile is shifted left to end at V; its columns an earlier tile covered (not `fresh`)
        # get no gradient here.
        start, fresh = tile_starts(i, tile, vocab)
        columns = start + jnp.arange(tile, dtype=jnp.int32)
        w = slice_rows(_per_iteration(weight, i), start, tile, vocab_axis)
        scaled = _project(hidden, w, transposed)
        scaled = scaled if temperature == 1.0 else scaled / temperature
        logp_all = scaled - lse[..., None]
        probs = jnp.exp(logp_all)
        d_scaled = g_logp * ((columns == targets[..., None]).astype(jnp.float32) - probs)
        if use_ent:  # dH/ds_j = -p_j (log p_j + H)
            d_scaled = d_scaled - g_ent * probs * (logp_all + ent[..., None])
        d_scaled = jnp.where(fresh, d_scaled, 0.0)
        d_logits = (d_scaled if temperature == 1.0 else d_scaled / temperature).astype(weight.dtype)
        # d hidden += d_logits @ W_tile^T; d W_tile = h^T @ d_logits, as 2-D matmuls (XLA:CPU runs them
        # faster than einsums with free batch axes, see `project`).
        flat_d = d_logits.reshape(-1, tile)
        d_h = jax.lax.dot_general(flat_d, w, (((1,), (vocab_axis,)), ((), ())),
                                  preferred_element_type=jnp.float32).reshape(hidden.shape)
        first, second = (flat_d, flat_h) if transposed else (flat_h, flat_d)
        d_w = jax.lax.dot_general(first, second, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        # Columns an earlier tile covered keep that tile's gradient (a select, not an add: XLA:CPU
        # would run a bfloat16 add on a float32 copy of the whole d_weight).
        keep = fresh[:, None] if transposed else fresh[None, :]
        d_w = jnp.where(keep, d_w.astype(weight.dtype), slice_rows(d_weight, start, tile, vocab_axis))
        d_weight = update_rows(d_weight, d_w, start, vocab_axis)
        return (d_weight, d_hidden + d_h), None

    init = (zeros_when_ready(weight.shape, weight.dtype, g_logp), zeros_when_ready(hidden.shape, jnp.float32, g_logp))
    (d_weight, d_hidden), _ = jax.lax.scan(one, init, jnp.arange(n))
    return d_hidden.astype(hidden.dtype), d_weight, None


_tiled.defvjp(_tiled_fwd, _tiled_bwd, symbolic_zeros=True)
