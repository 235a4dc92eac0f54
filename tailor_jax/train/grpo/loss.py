"""The GRPO objective as pure functions of arrays (SPEC-methods.md section 2).

Shapes: B completions (rows), T completion tokens; `mask` [B, T] is 1 on completion tokens
that count (0 on padding). Everything is jnp, jit-able; the string/bool/float options are
static Python values (no control flow on array values).

Per token t of completion i, with A_i the advantage and rho = exp(logp - old_logp):
    policy_t = -min(rho * A_i, clip(rho, 1 - epsilon_low, 1 + epsilon_high) * A_i)
    (policy_gradient=True: policy_t = -A_i * logp, no ratio and no clipping)
    policy_t *= w_t                  if importance_weights w is given (a constant, see below)
    loss_t   = policy_t + beta * KL_t        (the KL term is skipped entirely when beta == 0)
KL estimators of KL(pi_theta || pi_ref), with d = ref_logp - logp:
    k1 = -d = logp - ref_logp,   k2 = d^2 / 2,   k3 = exp(d) - d - 1
Aggregation over loss_t (m = mask, L = max_len, default T):
    token_mean:              sum_it(loss m) / sum_it(m)                 (DAPO)
    seq_mean_token_mean:     mean_i( sum_t(loss m) / sum_t(m) )          (GRPO paper)
    seq_mean_token_sum_norm: sum_it(loss m) / (B * L)                    (Dr. GRPO)
Denominators are clamped at 1; a row whose mask is all zero counts in B with loss 0 (as in TRL).
To split a batch into micro-batches and accumulate gradients exactly, weight each micro-batch
loss by its share of the denominator (its token count, or its number of rows, over the total).

Truncated importance sampling (sampler-vs-trainer correction): when the sampler's log-probs
differ from the trainer's for the same weights, pass
    w = truncated_importance_weights(trainer_old_logp, sampler_logp, cap)
      = min(exp(trainer_old_logp - sampler_logp), cap)
as `importance_weights`; it multiplies each token's policy term (not the KL term) and carries no
gradient.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from tailor_jax.errors import TailorError

KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
REWARD_SCALINGS = ("group", "batch", "none")


def _float(x: jax.Array) -> jax.Array:
    """At least float32 (bf16 inputs are upcast; float64 stays float64 under x64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def group_advantages(
    rewards: jax.Array,
    group_size: int,
    scale_rewards: Literal["group", "batch", "none"] = "group",
    eps: float = 1e-4,
) -> jax.Array:
    """A_i = r_i - mean of its group, divided by (std + eps) for "group" (the group's std) or
    "batch" (the std of all rewards), unscaled for "none" (Dr. GRPO).

    rewards: [N] with the G = group_size completions of a prompt consecutive. Standard
    deviations are unbiased (ddof=1, as torch.std in TRL). Groups with equal rewards get A = 0.
    """
    if scale_rewards not in REWARD_SCALINGS:
        raise TailorError(f"scale_rewards must be one of {', '.join(REWARD_SCALINGS)}, got {scale_rewards!r}")
    rewards = _float(rewards)
    if rewards.ndim != 1 or group_size < 1 or rewards.shape[0] % group_size:
        raise TailorError(f"rewards of shape {rewards.shape} cannot be split into groups of {group_size}")
    if scale_rewards != "none" and group_size < 2:
        raise TailorError("group_size must be >= 2 to scale advantages by a standard deviation")
    grouped = rewards.reshape(-1, group_size)
    centered = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)
    if scale_rewards == "group":
        std = jnp.repeat(grouped.std(axis=1, ddof=1), group_size)
    elif scale_rewards == "batch":
        std = rewards.std(ddof=1)
    else:
        return centered
    return centered / (std + eps)


def kl_estimate(logp: jax.Array, ref_logp: jax.Array, kl: Literal["k1", "k2", "k3"] = "k3") -> jax.Array:
    """Per-token estimate of KL(pi_theta || pi_ref) from log-probs of sampled tokens."""
    d = ref_logp - logp
    if kl == "k1":
        return -d
    if kl == "k2":
        return 0.5 * d * d
    if kl == "k3":
        return jnp.exp(d) - d - 1.0
    raise TailorError(f"kl must be one of {', '.join(KL_ESTIMATORS)}, got {kl!r}")


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def grpo_loss(
    logp: jax.Array,
    old_logp: jax.Array | None,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    kl: Literal["k1", "k2", "k3"] = "k3",
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean",
    max_len: int | None = None,
    policy_gradient: bool = False,
    importance_weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss (see the module docstring) and its metrics.

    logp: [B, T] trainer log-probs (differentiated). old_logp: [B, T] log-probs of the policy that
    sampled (None: stop_gradient(logp), i.e. on-policy). ref_logp: [B, T] reference log-probs,
    only needed when beta > 0. advantages: [B]. mask: [B, T].
    Metrics (TRL names): kl (when ref_logp is given), clip_ratio/low_mean (fraction of tokens with
    rho < 1 - epsilon_low and A < 0), clip_ratio/high_mean (rho > 1 + epsilon_high and A > 0),
    clip_ratio/region_mean (either), num_tokens.
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise TailorError(f"loss_agg must be one of {', '.join(LOSS_AGGREGATIONS)}, got {loss_agg!r}")
    if kl not in KL_ESTIMATORS:
        raise TailorError(f"kl must be one of {', '.join(KL_ESTIMATORS)}, got {kl!r}")
    if beta < 0:
        raise TailorError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise TailorError("beta > 0 needs ref_logp (reference-model log-probs); set beta=0 to train without it")
    logp = _float(logp)
    mask = _float(mask).astype(logp.dtype)
    adv = _float(advantages).astype(logp.dtype)[:, None]
    old = jax.lax.stop_gradient(logp) if old_logp is None else _float(old_logp)

    if policy_gradient:
        policy = -adv * logp
        low_clipped = high_clipped = jnp.zeros_like(logp)
    else:
        ratio = jnp.exp(logp - old)
        clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
        policy = -jnp.minimum(ratio * adv, clipped * adv)
        low_clipped = ((ratio < 1.0 - epsilon_low) & (adv < 0)).astype(logp.dtype)
        high_clipped = ((ratio > 1.0 + epsilon_high) & (adv > 0)).astype(logp.dtype)
    if importance_weights is not None:
        policy = policy * jax.lax.stop_gradient(_float(importance_weights))

    metrics: dict[str, jax.Array] = {}
    per_token = policy
    if ref_logp is not None:
        per_token_kl = kl_estimate(logp, _float(ref_logp), kl)
        metrics["kl"] = _masked_mean(jax.lax.stop_gradient(per_token_kl), mask)
        if beta > 0:
            per_token = policy + beta * per_token_kl

    if loss_agg == "token_mean":
        loss = (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    elif loss_agg == "seq_mean_token_mean":
        loss = ((per_token * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)).mean()
    else:
        length = logp.shape[1] if max_len is None else max_len
        loss = (per_token * mask).sum() / (logp.shape[0] * length)

    metrics["clip_ratio/low_mean"] = _masked_mean(low_clipped, mask)
    metrics["clip_ratio/high_mean"] = _masked_mean(high_clipped, mask)
    metrics["clip_ratio/region_mean"] = _masked_mean(jnp.maximum(low_clipped, high_clipped), mask)
    metrics["num_tokens"] = mask.sum()
    return loss, metrics


def truncated_importance_weights(trainer_logp: jax.Array, sampler_logp: jax.Array, cap: float = 2.0) -> jax.Array:
    """min(exp(trainer_logp - sampler_logp), cap), per token, without gradient."""
    ratio = jnp.exp(_float(trainer_logp) - _float(sampler_logp))
    return jax.lax.stop_gradient(jnp.minimum(ratio, cap))


def logp_drift_metrics(trainer_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """How far the sampler's log-probs are from a trainer forward pass on the same tokens."""
    mask = _float(mask)
    diff = jnp.abs(_float(trainer_logp) - _float(sampler_logp))
    return {
        "sampler_trainer/logp_diff_mean": _masked_mean(diff, mask),
        "sampler_trainer/logp_diff_max": jnp.max(jnp.where(mask > 0, diff, 0.0)),
    }
