"""Shared by sampler.py and grpo_step.py: the `bench-tiny` model of /work/shared/BENCHMARKS.md and
this machine's float32 matmul peak (the roofline's denominator)."""

from __future__ import annotations

import statistics
import time

BENCH_TINY = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6)


def matmul_peak_flops(size: int = 2048, repeats: int = 7) -> float:
    """Median float32 rate of a size^3 matmul through JAX (FLOP/s)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)
