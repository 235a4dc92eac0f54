"""A/B of two XLA:CPU layout choices in the model, back-to-back in one process.

    python benchmarks/cpu_layout_ab.py [--repeats 8]

On bench-tiny shapes it times, for each variant, one GRPO update micro-batch (32 rows of a
64-token prompt x G = 8 + 128 completion tokens, forward + backward), the reference forward over
the same rows, and the `sample` workload (16 prompts x G = 8 x 128 new tokens). Variants:

- `now`: the model as it is (projections as 2-D matmuls, rope through a concatenate);
- `einsum`: projections written as einsums with free batch/length axes ("bth,hf->btf"), as
  before 2026-12-03;
- `rope_product`: rope's rotate_half as a product with a signed permutation.

The variants are swapped in by replacing `project` / `apply_rope` in the model module (whose
layers also run the sampler's decode step) before tracing; the timed calls then alternate between
variants, so each median compares runs under about the same machine load. Prints one JSON line
per variant and a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import string
import time

import jax
import jax.numpy as jnp
import numpy as np

from tailor_jax.model import create_model, get_preset, transformer
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.parallel.sharding import use_sharding
from tailor_jax.sampling import Sampler
from tailor_jax.train import grpo as gt
from tailor_jax.train.state import split_model


def einsum_project(x, kernel, in_dims=1, *, transposed=False, preferred_element_type=None):
    """`transformer.project` written as one einsum over the unflattened axes."""
    lead = string.ascii_lowercase[: x.ndim - in_dims]
    contracted = string.ascii_lowercase[x.ndim - in_dims : x.ndim]
    free = string.ascii_uppercase[: kernel.ndim - in_dims]
    kernel_axes = free + contracted if transposed else contracted + free
    return jnp.einsum(f"{lead}{contracted},{kernel_axes}->{lead}{free}", x, kernel,
                      preferred_element_type=preferred_element_type)


def product_rope(x, cos, sin):
    """`transformer.apply_rope` with rotate_half(x) = [-x2, x1] as an exact product with a signed
    permutation instead of a concatenate (tried, not adopted: no consistent gain)."""
    half = x.shape[-1] // 2
    eye, zero = np.eye(half, dtype=np.float32), np.zeros((half, half), np.float32)
    rotated = jnp.matmul(x, jnp.asarray(np.block([[zero, eye], [-eye, zero]]), x.dtype))
    cos, sin = (jnp.concatenate([t, t], axis=-1)[:, :, None, :].astype(x.dtype) for t in (cos, sin))
    return x * cos + rotated * sin


VARIANTS = {
    "now": {},
    "einsum": {"project": einsum_project},
    "rope_product": {"apply_rope": product_rope},
}


def build(name: str, rows: dict, prompts: list[list[int]]) -> dict:
    """Trace and compile the three timed calls with the variant's functions swapped in."""
    originals = {k: getattr(transformer, k) for k in ("project", "apply_rope")}
    for k, fn in {**originals, **VARIANTS[name]}.items():
        setattr(transformer, k, fn)
    try:
        mesh_cfg = MeshConfig()
        mesh, rules = create_mesh(mesh_cfg), mesh_cfg.axis_rules()
        model = create_model(get_preset("bench-tiny"), mesh=mesh, rules=rules)
        graphdef, params, rest = split_model(model)
        zeros = jax.tree.map(jnp.zeros_like, params)
        batch = gt.place_rows(rows, mesh, rules)
        with use_sharding(mesh, rules):
            accumulate = jax.jit(gt.make_accumulate_fn(graphdef, gt.LossConfig(beta=0.04), 1.0, 128))
            logp = jax.jit(gt.make_logp_fn(graphdef, 1.0))
        sampler = Sampler(model)
        calls = {
            "update": lambda: accumulate(zeros, params, rest, batch, jnp.float32(1.0)),
            "reference": lambda: logp(params, rest, batch),
            "sample": lambda: sampler.generate(prompts, max_new_tokens=128, temperature=1.0, num_samples=8,
                                               eos_token_ids=[], seed=0).token_array,
        }
        for call in calls.values():
            jax.block_until_ready(call())
        return calls
    finally:
        for k, fn in originals.items():
            setattr(transformer, k, fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8, help="timed calls per variant and measurement")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    distinct = [rng.integers(3, 4096, 64).tolist() for _ in range(16)]
    rows = gt.build_rows([distinct[i // 8] for i in range(32)], rng.integers(3, 4096, (32, 128)), np.full(32, 128), 0)
    logp = -np.abs(rng.normal(size=(32, 128))).astype(np.float32)
    rows.update(advantages=rng.normal(size=32).astype(np.float32), sampler_logp=logp, old_logp=logp, ref_logp=logp)

    built = {name: build(name, rows, distinct) for name in VARIANTS}
    times = {(name, call): [] for name in VARIANTS for call in built[name]}
    for _ in range(args.repeats):
        for name, calls in built.items():
            for call, fn in calls.items():
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times[(name, call)].append(time.perf_counter() - start)

    medians = {key: statistics.median(values) for key, values in times.items()}
    for name in VARIANTS:
        print(json.dumps({"variant": name, **{f"{call}_s_median": medians[(name, call)] for call in built[name]}}))
    print(f"\n{'variant':<14}{'update s':>10}{'reference s':>13}{'sample s':>10}   (x now: update / reference / sample)")
    for name in VARIANTS:
        ratios = " / ".join(f"{medians[(name, c)] / medians[('now', c)]:.2f}" for c in ("update", "reference", "sample"))
        print(f"{name:<14}{medians[(name, 'update')]:>10.3f}{medians[(name, 'reference')]:>13.3f}"
              f"{medians[(name, 'sample')]:>10.3f}   {ratios}")


if __name__ == "__main__":
    main()
