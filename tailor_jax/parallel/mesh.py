"""Device mesh from config: axes `data` (replicated params, split batch), `fsdp` (split params and
batch) and `tensor` (split heads / mlp / vocab)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from tailor_jax.errors import TailorError
from tailor_jax.parallel.sharding import DEFAULT_RULES, MeshAxes

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes (one of them may be -1: all remaining devices) and logical-axis rule overrides.

    `rules` maps a logical axis name to a list of mesh axes ([] = replicate) and is applied on top of
    `DEFAULT_RULES`, e.g. {"embed": [], "mlp": ["fsdp", "tensor"]}.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    rules: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        sizes = self.sizes()
        if any(s == 0 or s < -1 for s in sizes):
            raise TailorError(f"mesh sizes must be positive or -1, got data={self.data} fsdp={self.fsdp} tensor={self.tensor}")
        if sizes.count(-1) > 1:
            raise TailorError("at most one mesh axis (data, fsdp, tensor) may be -1")
        for name, axes in (self.rules or {}).items():
            bad = [a for a in ([axes] if isinstance(axes, str) else axes or []) if a not in MESH_AXES]
            if bad:
                raise TailorError(f"mesh.rules.{name}: unknown mesh axis {bad[0]!r}; use {', '.join(MESH_AXES)}")

    def sizes(self) -> list[int]:
        return [self.data, self.fsdp, self.tensor]

    def axis_rules(self) -> tuple[tuple[str, MeshAxes], ...]:
        """DEFAULT_RULES with this config's overrides applied (new logical names appended)."""
        overrides = {
            name: (axes if isinstance(axes, str) or axes is None else tuple(axes) or None)
            for name, axes in (self.rules or {}).items()
        }
        merged = [(name, overrides.pop(name, axes)) for name, axes in DEFAULT_RULES]
        return tuple(merged + list(overrides.items()))

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = self.sizes()
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise TailorError(f"mesh {self.describe()}: {num_devices} devices are not divisible by {known}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise TailorError(
                f"mesh {self.describe()} needs {math.prod(sizes)} devices but {num_devices} are available; "
                "set one axis to -1 to use all devices (on CPU, TAILOR_CPU_DEVICES=N sets the device count)"
            )
        return tuple(sizes)

    def describe(self) -> str:
        return f"(data={self.data}, fsdp={self.fsdp}, tensor={self.tensor})"

    @classmethod
    def auto(cls) -> MeshConfig:
        """Every device on `data` on CPU, on `fsdp` elsewhere (`auto_mesh_axes`): the trainers' default."""
        return cls(**auto_mesh_axes())


def auto_mesh_axes(platform: str | None = None) -> dict[str, int]:
    """The `auto` layout. On CPU every device on `data`: the devices are cores of one host
    (parallel.cpu), so replicated weights cost nothing to move and skip fsdp's gathers (a GRPO step
    1.15-1.18x faster than fsdp on 2 cores, benchmarks/README.md). Elsewhere every device on `fsdp`."""
    platform = platform or jax.default_backend()
    return {"data": -1, "fsdp": 1, "tensor": 1} if platform == "cpu" else {"data": 1, "fsdp": -1, "tensor": 1}


def create_mesh(config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes ("data", "fsdp", "tensor") over `devices` (default: all devices of all processes).

    Devices are laid out with `mesh_utils.create_device_mesh` (topology-aware on TPU); the outermost
    axis (`data`) varies slowest, so across hosts it is the one that crosses process boundaries.
    A fixed-size mesh must use every device, except a one-device mesh over one process's CPU
    devices (cores of one host, parallel.cpu): that takes the first, so `single-device` runs anywhere.
    """
    config = config or MeshConfig()
    if devices is None:
        devices = jax.devices()
        if config.sizes() == [1, 1, 1] and jax.process_count() == 1 and devices[0].platform == "cpu":
            devices = devices[:1]
    devices = list(devices)
    shape = config.resolve(len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
