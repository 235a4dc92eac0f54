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

from tailor_jax.parallel.sharding import Rules, logical_sharding, state_shardings


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


def batch_sharding(mesh: Mesh, rules: Rules | None = None) -> NamedSharding:
    """[batch, length] arrays: batch split as the rules map "batch" (data x fsdp by default)."""
    return logical_sharding(("batch", "length"), mesh, rules)


def data_parallel_size(mesh: Mesh, rules: Rules | None = None) -> int:
    """How many ways the batch dimension is split (batch sizes must be multiples of it)."""
    spec = batch_sharding(mesh, rules).spec
    axes = () if not spec or spec[0] is None else (spec[0],) if isinstance(spec[0], str) else tuple(spec[0])
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def global_batch(local_batch: dict, mesh: Mesh, rules: Rules | None = None) -> dict:
    """Assemble this host's rows into global arrays sharded over the mesh (multi-host safe)."""
    sharding = batch_sharding(mesh, rules)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, seed: int, mesh: Mesh, rules: Rules | None = None
) -> tuple[nnx.GraphDef, TrainState]:
    """Split `model`, place its parameters on `mesh` by their logical axes, init the optimizer."""
    graphdef, params, rest = split_model(model)
    params = jax.device_put(params, _unbox(state_shardings(params, mesh, rules)))
    replicated = NamedSharding(mesh, PartitionSpec())
    rest = jax.device_put(rest, replicated)
    # Moment estimates get their parameters' shardings (tx.init's zeros carry no layout of their
    # own), everything else (step counts) is replicated: one layout, the same after a restore.
    opt_shardings = optax.tree_map_params(
        tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, params), jax.tree.map(lambda x: x.sharding, params),
        transform_non_params=lambda _: replicated,
    )
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
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
