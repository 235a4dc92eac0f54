"""One JAX device per CPU core.

With one CPU device, XLA:CPU spreads a small model's decode step (small matmuls, many
elementwise ops) poorly over the cores. Splitting the host into one device per core and putting
them on the mesh's `data` axis lets each core run its share of the batch (benchmarks/README.md,
2 cores: the sampler 1.29x faster, a GRPO step 1.07-1.10x; 4 devices on 2 cores were slower).
"""

from __future__ import annotations

import os

import jax

from tailor_jax.errors import TailorError

ENV_CPU_DEVICES = "TAILOR_CPU_DEVICES"
MAX_AUTO_CPU_DEVICES = 8  # batch sizes must split over the devices; the shipped CPU configs do up to 8


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under `taskset`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


def auto_cpu_device_count(cores: int, cap: int = MAX_AUTO_CPU_DEVICES) -> int:
    """The largest power of two <= min(cores, cap): batches (powers of two) split evenly over it."""
    count = 1
    while count * 2 <= min(cores, cap):
        count *= 2
    return count


def _count_chosen_elsewhere() -> bool:
    """XLA_FLAGS, JAX_NUM_CPU_DEVICES or an earlier jax.config update already set the count."""
    return ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices != -1)


def configure_cpu_devices(count: int | None = None) -> int | None:
    """Expose `count` CPU devices to JAX; call before any JAX computation. Returns the count set.

    Without `count`: TAILOR_CPU_DEVICES if set, else nothing when XLA_FLAGS
    (--xla_force_host_platform_device_count) or JAX_NUM_CPU_DEVICES already choose it, else one
    device per usable core (a power of two, at most 8). Once JAX has started its backends the count
    is fixed, and this returns None. Accelerator runs are unaffected (the CPU backend is not used).
    """
    if count is None:
        env = os.environ.get(ENV_CPU_DEVICES, "").strip()
        if env:
            if not env.isdigit() or int(env) < 1:
                raise TailorError(f"{ENV_CPU_DEVICES}={env!r}: give a positive number of CPU devices, e.g. 1 or 2")
            count = int(env)
        elif _count_chosen_elsewhere():
            return None
        else:
            count = auto_cpu_device_count(usable_cores())
    elif count < 1:
        raise TailorError(f"CPU device count must be >= 1, got {count}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX's backends are already running: the count is fixed
        return None
    return count
