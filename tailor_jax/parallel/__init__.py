"""Device mesh, logical-axis sharding rules and multi-host initialisation."""

from tailor_jax.parallel.distributed import initialize_distributed, is_main_process
from tailor_jax.parallel.mesh import MESH_AXES, MeshConfig, create_mesh
from tailor_jax.parallel.sharding import (
    DEFAULT_RULES, constrain, logical_sharding, logical_to_spec, put_global, shard_state, state_shardings,
    use_sharding,
)

__all__ = [
    "DEFAULT_RULES", "MESH_AXES", "MeshConfig", "constrain", "create_mesh", "initialize_distributed",
    "is_main_process", "logical_sharding", "logical_to_spec", "put_global", "shard_state", "state_shardings",
    "use_sharding",
]
