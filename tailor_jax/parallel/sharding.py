"""Logical-axis sharding: parameters and activations name their axes ("embed", "mlp", "batch", ...);
rules map those names to mesh axes ("data", "fsdp", "tensor"). Declared once, used everywhere."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tailor_jax.errors import TailorError

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# Parameters: "embed" is split over fsdp (ZeRO-3 style), heads / mlp / vocab over tensor (Megatron style).
# Activations: batch over data+fsdp, heads / mlp / vocab over tensor, sequence and hidden replicated.
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
)


def rules_from_config(rules: Any) -> tuple[tuple[str, MeshAxes], ...]:
    """Normalise rules given as a mapping or as pairs (e.g. from YAML) to a tuple of (logical, mesh axes)."""
    if rules is None:
        return DEFAULT_RULES
    items = rules.items() if isinstance(rules, dict) else rules
    out = []
    for item in items:
        try:
            name, axes = item
        except (TypeError, ValueError):
            raise TailorError(f"sharding rule {item!r} is not a (logical_name, mesh_axes) pair") from None
        if isinstance(axes, list):
            axes = tuple(axes)
        if axes is not None and not isinstance(axes, (str, tuple)):
            raise TailorError(f"sharding rule for {name!r}: mesh axes must be a name, a list of names or null")
        out.append((str(name), axes))
    return tuple(out)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: Rules | None = None,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry `logical_axes`.

    Mesh axes absent from `mesh` or of size 1 are dropped, a mesh axis is used at most once, and when
    `shape` is given a dimension is only split over mesh axes whose product divides it (otherwise the
    trailing mesh axes are dropped until it does), so every parameter of every model gets a valid layout.
    """
    table = dict(rules_from_config(rules))
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, name in enumerate(logical_axes):
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
        axes = tuple(a for a in axes if a not in used)
        if shape is not None and mesh is not None:
            while axes and shape[dim] % int(np.prod([mesh.shape[a] for a in axes])):
                axes = axes[:-1]
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_sharding(
    logical_axes: Sequence[str | None], mesh: Mesh, rules: Rules | None = None,
    shape: Sequence[int] | None = None,
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh, shape))


def variable_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    """Logical axes recorded on a parameter (metadata `logical_axes`), or all-None if it has none."""
    axes = variable.get_metadata().get("logical_axes")
    ndim = len(np.shape(variable.get_value()))
    return tuple(axes) if axes is not None else (None,) * ndim


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules | None = None) -> nnx.State:
    """A State of NamedShardings mirroring `state` (works on abstract states from `nnx.eval_shape`)."""
    def one(variable: nnx.Variable) -> nnx.Variable:
        shape = np.shape(variable.get_value())
        return variable.replace(logical_sharding(variable_axes(variable), mesh, rules, shape))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


# Activation constraints: active only inside `use_sharding(mesh, rules)`, a no-op otherwise.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "tailor_jax_sharding", default=None
)


@contextlib.contextmanager
def use_sharding(mesh: Mesh, rules: Rules | None = None) -> Iterator[None]:
    """Within this block, `constrain` pins activations to the mesh (trace jitted functions inside it)."""
    token = _ACTIVE.set((mesh, rules_from_config(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_sharding() -> tuple[Mesh, tuple] | None:
    return _ACTIVE.get()


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical axis names when a mesh is active; identity otherwise."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, logical_sharding(logical_axes, mesh, rules, x.shape))


def put_global(
    array: Any, mesh: Mesh, logical_axes: Sequence[str | None], rules: Rules | None = None
) -> jax.Array:
    """A global array sharded by logical axes from a host value that every process holds in full
    (e.g. a batch of token ids); each process only transfers its own shards."""
    host = np.asarray(array)
    sharding = logical_sharding(logical_axes, mesh, rules, host.shape)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_state(state: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """`state` (an nnx.State of parameters) moved to the shardings given by its logical axes."""
    return jax.device_put(state, state_shardings(state, mesh, rules))
