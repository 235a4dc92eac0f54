"""Multi-host initialisation: one call at program start, a no-op in a single-process run."""

from __future__ import annotations

import os

import jax

from tailor_jax.errors import TailorError

# Environment variables read when no argument is given (the JAX_* names are JAX's own conventions).
ENV_COORDINATOR = ("TAILOR_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("TAILOR_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("TAILOR_PROCESS_ID", "JAX_PROCESS_ID")


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _on_multihost_tpu() -> bool:
    """A TPU VM slice (JAX discovers the coordinator, process count and id from TPU metadata):
    launched by tpu_scripts (TAILOR_TPU_SLICE=1; plain Cloud TPU VMs keep the worker list in
    the metadata server, not the environment), or an environment that names several workers."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return (
        os.environ.get("TAILOR_TPU_SLICE") == "1"
        or "," in hosts
        or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))
    )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
) -> bool:
    """Start JAX's multi-controller runtime if this is a multi-process run; return whether it is.

    Sources, in order: the arguments; TAILOR_/JAX_ COORDINATOR_ADDRESS, NUM_PROCESSES, PROCESS_ID
    environment variables; TPU VM metadata on a multi-worker slice (`jax.distributed.initialize()`
    with no arguments). Otherwise (one process) nothing happens. Call it before any other JAX call.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or _env(ENV_COORDINATOR)
    if coordinator_address is None:
        if _on_multihost_tpu():
            jax.distributed.initialize()
            return True
        return False
    num = num_processes if num_processes is not None else _env(ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else _env(ENV_PROCESS_ID)
    if num is None or pid is None:
        raise TailorError(
            f"coordinator address {coordinator_address} is set but the number of processes or this "
            "process's id is not: set JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass them)"
        )
    try:
        num, pid = int(num), int(pid)
    except ValueError:
        raise TailorError(f"JAX_NUM_PROCESSES={num!r} and JAX_PROCESS_ID={pid!r} must be integers") from None
    if not 0 <= pid < num:
        raise TailorError(f"process id {pid} is out of range for {num} processes")
    if num == 1:
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num, process_id=pid,
        local_device_ids=local_device_ids,
    )
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes shared files and logs)."""
    return jax.process_index() == 0
