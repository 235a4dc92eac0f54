"""Optimizer: schedules and AdamW steps (clipping, masked weight decay) against NumPy."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tailor_jax.config import OptimizerConfig
from tailor_jax.errors import TailorError
from tailor_jax.train.optim import learning_rate_schedule, make_optimizer


def reference_lr(schedule, step, lr, warmup, total, end_ratio):
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    end = lr * end_ratio
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return lr + (end - lr) * p
    return end + (lr - end) * (1 + math.cos(math.pi * p)) / 2


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_schedule_matches_formula(schedule, warmup):
    cfg = OptimizerConfig(lr=2e-3, schedule=schedule, warmup_steps=warmup, end_lr_ratio=0.1)
    fn = learning_rate_schedule(cfg, total_steps=12)
    for step in range(0, 15):
        expected = reference_lr(schedule, step, 2e-3, warmup, 12, 0.1)
        assert float(fn(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12), step
    if warmup:
        assert float(fn(warmup - 1)) == pytest.approx(2e-3)  # warmup reaches the peak
    if schedule != "constant":
        assert float(fn(12)) == pytest.approx(2e-4, rel=1e-6)  # decays to end_lr_ratio * lr


def test_bad_step_counts():
    with pytest.raises(TailorError, match="warmup_steps"):
        learning_rate_schedule(OptimizerConfig(warmup_steps=10), total_steps=5)
    with pytest.raises(TailorError, match="total training steps"):
        learning_rate_schedule(OptimizerConfig(), total_steps=0)


def numpy_adamw(params, grads_seq, lr_fn, b1, b2, eps, wd, clip):
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for t, grads in enumerate(grads_seq):
        if clip is not None:
            norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
            scale = min(1.0, clip / norm)
            grads = {k: g * scale for k, g in grads.items()}
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * grads[k]
            v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
            m_hat = m[k] / (1 - b1 ** (t + 1))
            v_hat = v[k] / (1 - b2 ** (t + 1))
            update = m_hat / (np.sqrt(v_hat) + eps)
            if params[k].ndim >= 2:
                update = update + wd * params[k]
            params[k] = params[k] - lr_fn(t) * update
    return params


@pytest.mark.parametrize("clip", [None, 0.5])
def test_adamw_steps_match_numpy(clip):
    cfg = OptimizerConfig(lr=1e-2, schedule="cosine", warmup_steps=2, weight_decay=0.1, grad_clip=clip)
    total = 6
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=(2,)).astype(np.float32)}
    grads_seq = [{k: rng.normal(size=p.shape).astype(np.float32) for k, p in params.items()} for _ in range(total)]
    optimizer = make_optimizer(cfg, total)
    state = optimizer.init({k: jnp.asarray(p) for k, p in params.items()})
    current = {k: jnp.asarray(p) for k, p in params.items()}
    for grads in grads_seq:
        updates, state = optimizer.update({k: jnp.asarray(g) for k, g in grads.items()}, state, current)
        current = optax.apply_updates(current, updates)
    lr_fn = lambda t: reference_lr("cosine", t, 1e-2, 2, total, 0.0)  # noqa: E731
    expected = numpy_adamw(params, grads_seq, lr_fn, 0.9, 0.999, 1e-8, 0.1, clip)
    for k in params:
        np.testing.assert_allclose(np.asarray(current[k]), expected[k], rtol=1e-5, atol=1e-6)
    # the bias (ndim 1) got no weight decay: with zero gradients it does not move
    zero = {k: jnp.zeros_like(jnp.asarray(p)) for k, p in params.items()}
    updates, _ = optimizer.update(zero, optimizer.init(zero), {k: jnp.asarray(p) for k, p in params.items()})
    assert np.all(np.asarray(updates["b"]) == 0) and np.any(np.asarray(updates["w"]) != 0)
