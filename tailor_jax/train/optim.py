"""The optimizer: learning-rate schedule with warmup, global-norm clipping, AdamW.

Schedule (step = number of updates already applied, counting from 0; W = warmup_steps,
T = total_steps, lr = peak, end = lr * end_lr_ratio):
    step < W:  lr * (step + 1) / W                      (linear warmup; the W-th update uses lr)
    else:      p = clip((step - W) / max(T - W, 1), 0, 1)
               constant: lr
               linear:   lr + (end - lr) * p
               cosine:   end + (lr - end) * (1 + cos(pi * p)) / 2
Weight decay (decoupled, AdamW) applies only to parameters with ndim >= 2 (matrices and
embeddings), not to norm scales or biases.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from tailor_jax.config import OptimizerConfig
from tailor_jax.errors import TailorError


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the update count (see the module docstring)."""
    if total_steps < 1:
        raise TailorError(f"total training steps must be >= 1, got {total_steps}")
    if cfg.warmup_steps > total_steps:
        raise TailorError(f"warmup_steps ({cfg.warmup_steps}) exceeds the total number of steps ({total_steps})")
    peak, end, warmup = cfg.lr, cfg.lr * cfg.end_lr_ratio, cfg.warmup_steps
    decay_steps = max(total_steps - warmup, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if cfg.schedule == "constant":
            decayed = jnp.full_like(progress, peak)
        elif cfg.schedule == "linear":
            decayed = peak + (end - peak) * progress
        else:
            decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        if warmup == 0:
            return decayed
        return jnp.where(step < warmup, peak * (step + 1.0) / warmup, decayed)

    return schedule


def decay_mask(params):
    """True for the parameters that get weight decay: those with ndim >= 2."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip by global norm (if grad_clip), then AdamW with the schedule and masked weight decay."""
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(cfg, total_steps),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
