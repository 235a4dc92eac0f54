"""Rotary position embedding (RoPE): inverse frequencies (with Llama-3 / linear scaling), the
angles' cos/sin at given positions, and the rotation in Hugging Face's `rotate_half` layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.model.config import ModelConfig


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Rotary inverse frequencies [head_dim // 2] (float32), with Llama-3 / linear scaling if configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq.astype(np.float32)
    if kind == "linear":
        return (inv_freq / scaling["factor"]).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise TailorError(f"unsupported rope_scaling type {kind!r}: supported are default, linear, llama3")


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate halves of the last axis of x [B, T, N, D] by cos/sin [B, T, D/2] (HF `rotate_half` layout)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rotary(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [..., head_dim // 2] (float32) of the rotary angles at int `positions` [...]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg))
    return jnp.cos(angles), jnp.sin(angles)
