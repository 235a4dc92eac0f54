"""Pure sampling math: next-token choice and its log-probability from a batch of logits.

Everything here works on `[batch, vocab]` float32 logits inside jit. Choices made for CPU speed
(where a decode step is only a few milliseconds): no full sort of the vocabulary, one uniform
number per row (inverse-CDF sampling over blocks of the vocabulary) instead of a Gumbel per
token, and greedy through two plain reductions instead of `argmax`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tailor_jax.errors import TailorError
from tailor_jax.model.logprobs import logprobs_from_logits

_BLOCK = 128  # vocabulary block for the two-level inverse CDF


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. `temperature == 0` is greedy (top-k / top-p ignored)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0):
            raise TailorError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 1):
            raise TailorError(f"top_k must be a positive integer or None, got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise TailorError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def program_key(self, vocab_size: int) -> tuple:
        """The part of the parameters that changes the compiled program (temperature and top_p values do not)."""
        if self.greedy:
            return ("greedy",)
        top_k = None if self.top_k is None or self.top_k >= vocab_size else int(self.top_k)
        return ("sample", top_k, self.top_p is not None and self.top_p < 1.0)


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """Index of the largest logit per row (the first one on ties, like `argmax`)."""
    vocab = logits.shape[-1]
    best = jnp.max(logits, axis=-1, keepdims=True)
    index = jnp.arange(vocab, dtype=jnp.int32)
    return jnp.min(jnp.where(logits >= best, index, vocab), axis=-1).astype(jnp.int32)


def _first_and_last_positive(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = weights.shape[-1]
    index = jnp.arange(n, dtype=jnp.int32)
    positive = weights > 0
    first = jnp.min(jnp.where(positive, index, n - 1), axis=-1)
    last = jnp.max(jnp.where(positive, index, 0), axis=-1)
    return first, last


def inverse_cdf_sample(weights: jax.Array, uniform: jax.Array) -> jax.Array:
    """Index i with probability weights[i] / sum(weights), per row, from one uniform in [0, 1) per row.

    Two levels: pick a block of the vocabulary by its total weight, then a token inside it, so the
    cost is a few passes over [batch, vocab] and no vocabulary-long scan. Zero-weight entries are
    never chosen, whatever the float rounding (the choice is clamped to the positive range).
    """
    batch, vocab = weights.shape
    block = min(_BLOCK, vocab)
    num_blocks = -(-vocab // block)
    padded = jnp.pad(weights, ((0, 0), (0, num_blocks * block - vocab)))
    blocks = padded.reshape(batch, num_blocks, block)
    block_sums = jnp.sum(blocks, axis=-1)
    block_cdf = jnp.cumsum(block_sums, axis=-1)
    target = uniform * block_cdf[:, -1]
    first, last = _first_and_last_positive(block_sums)
    chosen = jnp.clip(jnp.sum(block_cdf <= target[:, None], axis=-1).astype(jnp.int32), first, last)
    before = jnp.take_along_axis(block_cdf - block_sums, chosen[:, None], axis=-1)[:, 0]
    inner = jnp.take_along_axis(blocks, chosen[:, None, None], axis=1)[:, 0]
    inner_cdf = jnp.cumsum(inner, axis=-1)
    first, last = _first_and_last_positive(inner)
    offset = jnp.clip(jnp.sum(inner_cdf <= (target - before)[:, None], axis=-1).astype(jnp.int32), first, last)
    return chosen * block + offset


def _float_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, jnp.int32)


def top_p_threshold(probs: jax.Array, top_p: jax.Array) -> jax.Array:
    """Per row, the largest t with sum(probs[probs >= t]) >= top_p: {probs >= t} is the nucleus.

    Bisection over the int32 bit patterns of non-negative float32 (ordered like the floats), so the
    result is exact after 32 halvings and no sort of the vocabulary is needed.
    """
    batch = probs.shape[0]
    low = jnp.zeros((batch,), jnp.int32)  # mass(p >= 0) = 1 >= top_p
    high = _float_bits(jnp.max(probs, axis=-1)) + 1  # mass(p > max) = 0 < top_p

    def halve(_, bounds):
        low, high = bounds
        mid = low + (high - low) // 2
        threshold = jax.lax.bitcast_convert_type(mid, jnp.float32)
        mass = jnp.sum(jnp.where(probs >= threshold[:, None], probs, 0.0), axis=-1)
        keep = mass >= top_p
        return jnp.where(keep, mid, low), jnp.where(keep, high, mid)

    low, _ = jax.lax.fori_loop(0, 32, halve, (low, high))
    return jax.lax.bitcast_convert_type(low, jnp.float32)


def sample_tokens(
    logits: jax.Array,
    uniform: jax.Array,
    params: SamplingParams,
    temperature: jax.Array | float | None = None,
    top_p: jax.Array | float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Next token per row and its log-probability under the temperature-scaled distribution.

    `logits` [B, V] float32, `uniform` [B] in [0, 1). The log-probability is
    log softmax(logits / T)[token] over the full vocabulary -- the quantity a trainer recomputes --
    and, for greedy (T = 0), log softmax(logits)[token]. Top-k / top-p only restrict which tokens
    can be drawn. `temperature` / `top_p` may be traced scalars (so changing them does not
    recompile); they default to the values in `params`.
    """
    logits = logits.astype(jnp.float32)
    if params.greedy:
        tokens = greedy_tokens(logits)
        return tokens, logprobs_from_logits(logits, tokens)
    temperature = params.temperature if temperature is None else temperature
    top_p = params.top_p if top_p is None else top_p
    _, top_k, use_top_p = params.program_key(logits.shape[-1])
    scaled = logits / temperature
    best = jnp.max(scaled, axis=-1, keepdims=True)
    weights = jnp.exp(scaled - best)
    log_norm = best[:, 0] + jnp.log(jnp.sum(weights, axis=-1))

    if top_k is not None:
        top_values, top_index = jax.lax.top_k(scaled, top_k)  # sorted, descending
        top_weights = jnp.exp(top_values - best)
        if use_top_p:
            probs = top_weights / jnp.sum(top_weights, axis=-1, keepdims=True)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            top_weights = jnp.where(mass_before < top_p, top_weights, 0.0)
        choice = inverse_cdf_sample(top_weights, uniform)
        tokens = jnp.take_along_axis(top_index, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    else:
        if use_top_p:
            probs = weights / jnp.sum(weights, axis=-1, keepdims=True)
            threshold = top_p_threshold(probs, jnp.asarray(top_p, jnp.float32))
            weights = jnp.where(probs >= threshold[:, None], weights, 0.0)
        tokens = inverse_cdf_sample(weights, uniform)

    picked = jnp.take_along_axis(scaled, tokens[:, None], axis=-1)[:, 0]
    return tokens, picked - log_norm


def allowed_tokens_mask(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Reference (sort-based, slow) boolean [B, V] mask of the tokens top-k / top-p may emit; for tests."""
    scaled = logits.astype(jnp.float32) / params.temperature
    vocab = scaled.shape[-1]
    order = jnp.argsort(-scaled, axis=-1)
    sorted_scaled = jnp.take_along_axis(scaled, order, axis=-1)
    rank_ok = jnp.ones_like(sorted_scaled, dtype=bool)
    if params.top_k is not None and params.top_k < vocab:
        rank_ok = jnp.arange(vocab)[None, :] < params.top_k
    masked = jnp.where(rank_ok, sorted_scaled, -jnp.inf)
    probs = jax.nn.softmax(masked, axis=-1)
    if params.top_p is not None:
        rank_ok = rank_ok & ((jnp.cumsum(probs, axis=-1) - probs) < params.top_p)
    mask = jnp.zeros_like(rank_ok)
    return mask.at[jnp.arange(scaled.shape[0])[:, None], order].set(rank_ok)
