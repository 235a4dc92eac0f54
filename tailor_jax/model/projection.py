"""The model's one matmul primitive, `project`, and the switch that ties weights to their use
for the CPU compile that stands in for a device's memory (`weights_at_use`)."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np


def project(x: jax.Array, kernel: jax.Array, in_dims: int = 1, *, transposed: bool = False,
            preferred_element_type=None) -> jax.Array:
    """Contract the last `in_dims` axes of x with the leading `in_dims` axes of `kernel` (its
    trailing ones when `transposed`), as one 2-D matmul [rows, K] x [K, N].

    XLA:CPU runs the same contraction written as an einsum with extra free axes ("bth,hf->btf")
    markedly slower: a bench-tiny GRPO update micro-batch took 1.23-1.28x as long
    (benchmarks/cpu_layout_ab.py). The reshapes are free.
    """
    lead, k = x.shape[: x.ndim - in_dims], int(np.prod(x.shape[x.ndim - in_dims :]))
    rows = x.reshape(-1, k)
    if _WEIGHTS_AT_USE:
        rows, kernel = jax.lax.optimization_barrier((rows, kernel))
    if transposed:
        out = kernel.shape[: kernel.ndim - in_dims]
        y = jax.lax.dot_general(rows, kernel.reshape(-1, k), (((1,), (1,)), ((), ())),
                                preferred_element_type=preferred_element_type)
    else:
        out = kernel.shape[in_dims:]
        y = jnp.matmul(rows, kernel.reshape(k, -1), preferred_element_type=preferred_element_type)
    return y.reshape(*lead, *out)


_WEIGHTS_AT_USE = False


@contextlib.contextmanager
def weights_at_use():
    """While tracing inside: each matmul's weight waits for its input (an optimization barrier).

    For the CPU compile that stands in for a device's memory (train/memory_plan.py): XLA:CPU runs a
    bfloat16 matmul on float32 copies of its operands, and its scheduler makes the weights' copies
    early, so every layer's float32 MLP kernels (1.25 GiB at qwen2.5-0.5b) would be counted at
    once. A GPU/TPU program makes no such copies; tied to their inputs they are made one layer at
    a time. Off otherwise: on a device the barrier would keep FSDP's weight gathers from starting early.
    """
    global _WEIGHTS_AT_USE
    previous, _WEIGHTS_AT_USE = _WEIGHTS_AT_USE, True
    try:
        yield
    finally:
        _WEIGHTS_AT_USE = previous
