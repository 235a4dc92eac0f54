"""One process of the 2-process test in test_multihost.py (not a test module itself).

Usage: python multihost_worker.py CHECKPOINT_DIR TOKENS.npy OUT_DIR
The coordinator address, process count and id come from JAX_* environment variables.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

from tailor_jax.parallel import initialize_distributed  # noqa: E402

assert initialize_distributed(), "expected a multi-process run"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from tailor_jax.model import load_pretrained, save_pretrained  # noqa: E402
from tailor_jax.parallel import MeshConfig, create_mesh, put_global, use_sharding  # noqa: E402


def main(checkpoint: str, tokens_file: str, out_dir: str) -> None:
    assert jax.process_count() == 2 and jax.local_device_count() == 4 and jax.device_count() == 8
    mesh = create_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = load_pretrained(checkpoint, mesh=mesh)
    kernel = model.layers[0].mlp.gate_kernel.get_value()
    assert not kernel.is_fully_addressable and len(kernel.addressable_shards) == 4
    tokens = np.load(tokens_file)
    graphdef, state = nnx.split(model)
    replicated = NamedSharding(mesh, PartitionSpec())

    @jax.jit
    def forward(state, tokens):
        logits = nnx.merge(graphdef, state)(tokens)[0]
        return jax.lax.with_sharding_constraint(logits, replicated)

    with use_sharding(mesh):
        logits = forward(state, put_global(tokens, mesh, ("batch", "length")))
    np.save(os.path.join(out_dir, f"logits_{jax.process_index()}.npy"), np.asarray(logits.addressable_data(0)))
    save_pretrained(model, os.path.join(out_dir, "saved"))  # gathers across processes; process 0 writes


if __name__ == "__main__":
    main(*sys.argv[1:4])
