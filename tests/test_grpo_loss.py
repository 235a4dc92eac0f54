"""GRPO loss, advantages and token log-probs against NumPy references written from the formulas."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tailor_jax.errors import TailorError
from tailor_jax.train.grpo import (
    group_advantages,
    grpo_loss,
    logp_drift_metrics,
    truncated_importance_weights,
)
from tailor_jax.model.logprobs import logprobs_from_logits as token_logprobs

B, T = 6, 7


# --- NumPy references (float64) --------------------------------------------------------------
def np_kl(logp, ref, kind):
    d = ref - logp
    return {"k1": -d, "k2": d * d / 2, "k3": np.exp(d) - d - 1}[kind]


def np_grpo(logp, old, ref, adv, mask, *, eps_low, eps_high, beta, kl, agg, max_len, pg, weights):
    a = adv[:, None]
    if pg:
        policy = -a * logp
        low = high = np.zeros_like(logp)
    else:
        ratio = np.exp(logp - old)
        policy = -np.minimum(ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
        low = ((ratio < 1 - eps_low) & (a < 0)).astype(float)
        high = ((ratio > 1 + eps_high) & (a > 0)).astype(float)
    if weights is not None:
        policy = policy * weights
    total = policy + (beta * np_kl(logp, ref, kl) if beta > 0 else 0.0)
    if agg == "token_mean":
        loss = (total * mask).sum() / mask.sum()
    elif agg == "seq_mean_token_mean":
        loss = np.mean([(total[i] * mask[i]).sum() / max(mask[i].sum(), 1) for i in range(len(adv))])
    else:
        loss = (total * mask).sum() / (len(adv) * (max_len or logp.shape[1]))
    metrics = {
        "clip_ratio/low_mean": (low * mask).sum() / mask.sum(),
        "clip_ratio/high_mean": (high * mask).sum() / mask.sum(),
        "clip_ratio/region_mean": (np.maximum(low, high) * mask).sum() / mask.sum(),
        "num_tokens": mask.sum(),
    }
    if ref is not None:
        metrics["kl"] = (np_kl(logp, ref, kl) * mask).sum() / mask.sum()
    return loss, metrics


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, size=(B, T))
    old = logp + rng.normal(scale=0.6, size=(B, T))  # ratios well inside and outside [0.8, 1.28]
    ref = logp + rng.normal(scale=0.5, size=(B, T))
    adv = np.array([1.3, -0.7, 0.0, 2.1, -1.9, 0.4])
    lengths = np.array([7, 3, 1, 5, 0, 6])  # ragged, one empty row
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    weights = np.minimum(np.exp(rng.normal(scale=0.3, size=(B, T))), 1.5)
    return logp, old, ref, adv, mask, weights


COMBOS = list(
    itertools.product(
        ["k1", "k2", "k3"],
        ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"],
        [(0.2, 0.2), (0.2, 0.28)],
        [0.0, 0.04],
        [False, True],
        [False, True],
    )
)


@pytest.mark.parametrize("kl,agg,clip,beta,pg,use_weights", COMBOS)
def test_loss_matches_numpy(kl, agg, clip, beta, pg, use_weights):
    logp, old, ref, adv, mask, weights = make_inputs()
    max_len = 9 if agg == "seq_mean_token_sum_norm" and use_weights else None
    ref_arg = None if beta == 0 and pg else ref  # beta = 0 must work without a reference model
    f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)  # noqa: E731
    loss, metrics = grpo_loss(
        f32(logp), f32(old), f32(ref_arg), f32(adv), f32(mask),
        epsilon_low=clip[0], epsilon_high=clip[1], beta=beta, kl=kl, loss_agg=agg, max_len=max_len,
        policy_gradient=pg, importance_weights=f32(weights) if use_weights else None,
    )
    # the reference sees the float32-rounded inputs, computed in float64
    r = lambda x: None if x is None else np.asarray(np.float32(x), np.float64)  # noqa: E731
    expected_loss, expected = np_grpo(
        r(logp), r(old), r(ref_arg), r(adv), mask, eps_low=clip[0], eps_high=clip[1], beta=beta, kl=kl,
        agg=agg, max_len=max_len, pg=pg, weights=r(weights) if use_weights else None,
    )
    assert abs(float(loss) - expected_loss) <= 1e-6 * max(1.0, abs(expected_loss))
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert abs(float(metrics[name]) - value) <= 1e-6 * max(1.0, abs(value)), name
    if not pg:  # the clip metrics are exercised: some tokens are clipped on each side
        assert expected["clip_ratio/low_mean"] > 0 and expected["clip_ratio/high_mean"] > 0


def test_jit_and_beta_zero_without_reference():
    logp, old, _, adv, mask, _ = make_inputs(1)
    fn = jax.jit(lambda *a: grpo_loss(*a, None, jnp.asarray(adv), jnp.asarray(mask), loss_agg="seq_mean_token_mean"))
    loss, metrics = fn(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32))
    eager, _ = grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32), None, adv, mask,
                         loss_agg="seq_mean_token_mean")
    assert np.isclose(float(loss), float(eager), rtol=1e-6) and "kl" not in metrics
    with pytest.raises(TailorError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)
    with pytest.raises(TailorError, match="loss_agg"):
        grpo_loss(logp, old, None, adv, mask, loss_agg="sum")
    with pytest.raises(TailorError, match="kl must be"):
        grpo_loss(logp, old, None, adv, mask, kl="k4")


def test_on_policy_default_old_logp_gradient_equals_policy_gradient():
    """With old_logp=None (rho = 1, no clipping) the gradient is the plain policy gradient."""
    logp, _, _, adv, mask, _ = make_inputs(2)
    logp = jnp.asarray(logp, jnp.float32)
    g_ratio = jax.grad(lambda lp: grpo_loss(lp, None, None, adv, mask)[0])(logp)
    g_pg = jax.grad(lambda lp: grpo_loss(lp, None, None, adv, mask, policy_gradient=True)[0])(logp)
    np.testing.assert_allclose(np.asarray(g_ratio), np.asarray(g_pg), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "options",
    [
        dict(kl="k3", beta=0.04, loss_agg="token_mean", epsilon_high=0.28),
        dict(kl="k2", beta=0.1, loss_agg="seq_mean_token_mean"),
        dict(kl="k1", beta=0.1, loss_agg="seq_mean_token_sum_norm", max_len=10),
        dict(policy_gradient=True, loss_agg="token_mean", beta=0.04, kl="k3"),
        dict(loss_agg="token_mean", use_weights=True),
    ],
)
def test_gradient_matches_finite_differences(options):
    options = dict(options)
    use_weights = options.pop("use_weights", False)
    jax.config.update("jax_enable_x64", True)
    try:
        logp, old, ref, adv, mask, weights = make_inputs(3)
        weights = jnp.asarray(weights) if use_weights else None

        def f(lp):
            return grpo_loss(lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask),
                             importance_weights=weights, **options)[0]

        x = jnp.asarray(logp, jnp.float64)
        grad = np.asarray(jax.grad(f)(x))
        assert grad.dtype == np.float64
        h = 1e-6
        numeric = np.zeros_like(logp)
        for idx in np.ndindex(logp.shape):
            e = np.zeros_like(logp)
            e[idx] = h
            numeric[idx] = (float(f(x + e)) - float(f(x - e))) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
        assert np.all(grad[mask == 0] == 0) and np.any(grad != 0)
    finally:
        jax.config.update("jax_enable_x64", False)


# --- advantages ------------------------------------------------------------------------------
def np_advantages(rewards, g, scale, eps):
    grouped = rewards.reshape(-1, g)
    centered = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)
    if scale == "group":
        return centered / (np.repeat(grouped.std(axis=1, ddof=1), g) + eps)
    if scale == "batch":
        return centered / (rewards.std(ddof=1) + eps)
    return centered


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_numpy(scale):
    rng = np.random.default_rng(4)
    rewards = np.concatenate([rng.normal(size=8), np.full(4, 0.5), rng.integers(0, 2, size=4).astype(float)])
    got = np.asarray(group_advantages(jnp.asarray(rewards, jnp.float32), 4, scale_rewards=scale))
    expected = np_advantages(np.float32(rewards).astype(np.float64), 4, scale, 1e-4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.all(got[8:12] == 0), "a group with equal rewards has zero advantages"


def test_zero_std_groups_give_zero_advantages():
    rewards = jnp.asarray([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    for scale in ("group", "batch", "none"):
        assert np.all(np.asarray(group_advantages(rewards, 3, scale_rewards=scale)) == 0)
    with pytest.raises(TailorError, match="groups of 4"):
        group_advantages(rewards, 4)
    with pytest.raises(TailorError, match="scale_rewards"):
        group_advantages(rewards, 3, scale_rewards="global")


# --- token log-probs, IS weights, drift ------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_matches_numpy(temperature):
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=3.0, size=(2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, size=(2, 5))
    scaled = logits.astype(np.float64) / temperature
    log_softmax = scaled - np.log(np.exp(scaled - scaled.max(-1, keepdims=True)).sum(-1, keepdims=True)) - scaled.max(
        -1, keepdims=True
    )
    expected = np.take_along_axis(log_softmax, targets[..., None], axis=-1)[..., 0]
    got = token_logprobs(jnp.asarray(logits), jnp.asarray(targets), temperature)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)
    bf16 = token_logprobs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets), temperature)
    assert bf16.dtype == jnp.float32


def test_truncated_importance_weights_and_drift():
    trainer = jnp.asarray([[-1.0, -2.0, -0.5]])
    sampler = jnp.asarray([[-1.5, -1.0, -0.5]])
    w = truncated_importance_weights(trainer, sampler, cap=1.5)
    np.testing.assert_allclose(np.asarray(w), [[1.5, np.exp(-1.0), 1.0]], rtol=1e-6)
    assert np.all(np.asarray(jax.grad(lambda t: truncated_importance_weights(t, sampler).sum())(trainer)) == 0)
    drift = logp_drift_metrics(trainer, sampler, jnp.asarray([[1.0, 1.0, 0.0]]))
    assert float(drift["sampler_trainer/logp_diff_mean"]) == pytest.approx(0.75)
    assert float(drift["sampler_trainer/logp_diff_max"]) == pytest.approx(1.0)
