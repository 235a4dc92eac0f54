"""Sampler tests: sampling math against NumPy/SciPy, HF greedy parity, trainer log-prob parity, buckets."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from tailor_jax.errors import TailorError
from tailor_jax.sampling import ops
from tailor_jax.sampling.buckets import bucket, pad_prompts, stop_sequence_array

# ---------------------------------------------------------------- pure sampling math


def _numpy_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _chi_square_p(observed: np.ndarray, probs: np.ndarray) -> float:
    """p-value of observed counts against probabilities (renormalised in float64)."""
    probs = np.asarray(probs, np.float64)
    return float(stats.chisquare(observed, probs / probs.sum() * observed.sum()).pvalue)


@pytest.fixture(scope="module")
def draw():
    """A jitted sampler of `rows` i.i.d. draws from one row of logits (compiled once per params)."""

    cache = {}

    def run(logits_row: np.ndarray, params: ops.SamplingParams, rows: int, seed: int = 0):
        key = (params, rows, logits_row.shape)
        if key not in cache:
            cache[key] = jax.jit(lambda l, k: ops.sample_tokens(
                jnp.broadcast_to(l, (rows, l.shape[-1])), jax.random.uniform(k, (rows,)), params))
        tokens, logprobs = cache[key](jnp.asarray(logits_row), jax.random.key(seed))
        return np.asarray(tokens), np.asarray(logprobs)

    return run


def test_sampling_frequencies_match_softmax_chi_square(draw):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=12).astype(np.float32) * 1.5
    temperature = 0.7
    params = ops.SamplingParams(temperature=temperature)
    tokens, logprobs = draw(logits, params, 40_000, seed=1)
    probs = np.exp(_numpy_log_softmax(logits / temperature))
    observed = np.bincount(tokens, minlength=12)
    assert _chi_square_p(observed, probs) > 1e-3, (observed, probs * len(tokens))
    # The returned log-prob is that of the temperature-scaled distribution, per token.
    np.testing.assert_allclose(logprobs, np.log(probs)[tokens], rtol=0, atol=1e-5)


def test_sampling_chi_square_detects_a_wrong_distribution(draw):
    """The chi-square check has power: the same draws fail against the untempered softmax."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=12).astype(np.float32) * 1.5
    tokens, _ = draw(logits, ops.SamplingParams(temperature=0.7), 40_000, seed=1)
    wrong = np.exp(_numpy_log_softmax(logits))
    assert _chi_square_p(np.bincount(tokens, minlength=12), wrong) < 1e-6


def test_inverse_cdf_over_several_blocks_matches_weights():
    """A vocabulary wider than one block (with a ragged last block and zero weights)."""
    rng = np.random.default_rng(1)
    vocab = 300
    weights = rng.random(vocab).astype(np.float32) ** 4
    weights[rng.random(vocab) < 0.5] = 0.0
    rows = 60_000
    sample = jax.jit(lambda w, k: ops.inverse_cdf_sample(jnp.broadcast_to(w, (rows, vocab)),
                                                         jax.random.uniform(k, (rows,))))
    tokens = np.asarray(sample(jnp.asarray(weights), jax.random.key(3)))
    assert np.all(weights[tokens] > 0)
    expected = weights / weights.sum() * rows
    observed = np.bincount(tokens, minlength=vocab)
    big = expected > 20  # chi-square needs expected counts that are not tiny: pool the rest
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    assert _chi_square_p(obs, exp) > 1e-3


def test_inverse_cdf_edge_uniforms_never_pick_zero_weight():
    weights = jnp.array([[0.0, 1.0, 0.0, 2.0, 0.0]] * 4, jnp.float32)
    uniform = jnp.array([0.0, 1.0 - 1e-7, 0.3333333, 0.9999999], jnp.float32)
    tokens = np.asarray(ops.inverse_cdf_sample(weights, uniform))
    assert set(tokens.tolist()) <= {1, 3}
    assert tokens[0] == 1 and tokens[1] == 3


@pytest.mark.parametrize(
    "params",
    [
        ops.SamplingParams(temperature=1.0, top_k=3),
        ops.SamplingParams(temperature=2.0, top_p=0.8),
        ops.SamplingParams(temperature=2.0, top_k=6, top_p=0.7),
    ],
    ids=["top_k", "top_p", "top_k+top_p"],
)
def test_top_k_top_p_stay_inside_allowed_set_and_keep_proportions(draw, params):
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=16) * 2).astype(np.float32)
    tokens, logprobs = draw(logits, params, 20_000, seed=4)
    allowed = np.asarray(ops.allowed_tokens_mask(jnp.asarray(logits)[None], params))[0]
    assert 2 <= allowed.sum() < 16  # the filter binds and leaves a choice
    assert np.all(allowed[tokens]), f"emitted {sorted(set(tokens[~allowed[tokens]]))} outside {np.flatnonzero(allowed)}"
    # Inside the allowed set, draws follow the renormalised tempered softmax.
    probs = np.exp(_numpy_log_softmax(logits / params.temperature))
    observed = np.bincount(tokens, minlength=16)
    assert _chi_square_p(observed[allowed], probs[allowed]) > 1e-3
    # Log-probs are of the full tempered distribution (what the trainer recomputes), not the truncated one.
    np.testing.assert_allclose(logprobs, np.log(probs)[tokens], atol=1e-5)


def test_top_p_threshold_matches_sorted_reference():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(50, 0.3), size=8).astype(np.float32)
    for top_p in (0.05, 0.5, 0.9, 0.999):
        threshold = np.asarray(ops.top_p_threshold(jnp.asarray(probs), jnp.float32(top_p)))
        for row in range(8):
            order = np.sort(probs[row])[::-1]
            keep = int(np.searchsorted(np.cumsum(order), top_p, side="left")) + 1  # smallest prefix with mass >= p
            assert (probs[row] >= threshold[row]).sum() == min(keep, 50), (top_p, row)


def test_greedy_matches_argmax_with_ties_and_reports_untempered_logprob():
    logits = jnp.array([[1.0, 3.0, 3.0, -1.0], [0.5, 0.1, 0.2, 0.7]], jnp.float32)
    tokens, logprobs = ops.sample_tokens(logits, jnp.zeros((2,)), ops.SamplingParams())
    np.testing.assert_array_equal(np.asarray(tokens), [1, 3])
    np.testing.assert_allclose(np.asarray(logprobs),
                               _numpy_log_softmax(np.asarray(logits))[[0, 1], [1, 3]], atol=1e-6)


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(temperature=1.0, top_k=0),
                                 dict(temperature=1.0, top_p=0.0), dict(temperature=1.0, top_p=1.5)])
def test_bad_sampling_params_raise_one_line(bad):
    with pytest.raises(TailorError) as err:
        ops.SamplingParams(**bad)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- buckets and padding


def test_bucket_sizes():
    assert [bucket(n) for n in (1, 16, 17, 64, 65)] == [16, 16, 32, 64, 128]
    assert bucket(3, minimum=1) == 4
    assert bucket(5, minimum=1, multiple=8) == 8
    assert bucket(9, minimum=1, multiple=8) == 16
    assert bucket(3, minimum=1, multiple=6) == 6


def test_pad_prompts_left_pads_and_fills_rows():
    batch = pad_prompts([[5, 6, 7], [9]], length=4, batch=3, pad_id=0)
    np.testing.assert_array_equal(batch.tokens, [[0, 5, 6, 7], [0, 0, 0, 9], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(batch.positions[0, 1:], [0, 1, 2])
    np.testing.assert_array_equal(batch.positions[1, 3], 0)
    np.testing.assert_array_equal(batch.lengths, [3, 1, 0])


def test_stop_sequence_array_right_aligns():
    array = stop_sequence_array([[4, 5], [7]])
    np.testing.assert_array_equal(array, [[4, 5], [-1, 7]])
    with pytest.raises(TailorError):
        stop_sequence_array([[]])
