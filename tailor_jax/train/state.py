"""The train state: model parameters, optimizer state, step and RNG as one pytree.

The model's static structure (an NNX `GraphDef`) stays outside the state, so jitted steps are
pure functions `state, batch -> state, metrics` and the state checkpoints as a plain pytree.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tailor_jax.errors import TailorError
from tailor_jax.parallel.sharding import Rules, state_shardings

MESH_AXES = ("data", "fsdp", "tensor")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: nnx.State  # trainable parameters (nnx.Param)
    rest: nnx.State  # every other model variable (kept, not trained)
    opt_state: Any  # optax state
    rng: jax.Array  # uint32[2] raw PRNG key data, split once per step


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    return nnx.merge(graphdef, state.params, state.rest)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh; data=-1 takes the devices fsdp and tensor leave over."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or tensor < 1 or data == 0 or data < -1:
        raise TailorError(f"mesh sizes must be positive (data may be -1 for 'the rest'), got {data}, {fsdp}, {tensor}")
    if data == -1:
        if len(devices) % (fsdp * tensor):
            raise TailorError(f"{len(devices)} devices do not split into fsdp={fsdp} x tensor={tensor}")
        data = len(devices) // (fsdp * tensor)
    needed = data * fsdp * tensor
    if needed > len(devices):
        raise TailorError(f"the mesh needs {needed} devices (data={data} x fsdp={fsdp} x tensor={tensor}), only {len(devices)} exist")
    return Mesh(np.array(devices[:needed]).reshape(data, fsdp, tensor), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, seed: int, mesh: Mesh, rules: Rules | None = None
) -> tuple[nnx.GraphDef, TrainState]:
    """Split `model`, place its parameters on `mesh` by their logical axes, init the optimizer."""
    graphdef, params, rest = split_model(model)
    params = jax.device_put(params, _unbox(state_shardings(params, mesh, rules)))
    replicated = NamedSharding(mesh, PartitionSpec())
    rest = jax.device_put(rest, replicated)
    opt_state = jax.jit(tx.init)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
    rng = jax.device_put(jax.random.key_data(jax.random.key(seed)), replicated)
    return graphdef, TrainState(step=step, params=params, rest=rest, opt_state=opt_state, rng=rng)


def _unbox(shardings: nnx.State) -> nnx.State:
    """State of Variables holding shardings -> the same tree structure `device_put` accepts."""
    return jax.tree.map(
        lambda v: v.get_value() if isinstance(v, nnx.Variable) else v,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def state_shardings_of(state: TrainState):
    """The current sharding of every array in `state` (for jit out_shardings and restores)."""
    return jax.tree.map(lambda x: x.sharding, state)


def parameter_count(state: TrainState) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
