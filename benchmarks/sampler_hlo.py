"""The sampler's compiled program for the `sample` workload, as a fingerprint to compare two trees.

    python benchmarks/sampler_hlo.py [--out FILE]

Builds `bench-tiny` (random weights, seed 0) on the mesh `tailor-jax` uses on CPU (one device
per core, `MeshConfig.auto()`), samples the workload of benchmarks/sampler.py once (16 prompts x
G=8 x 128 new tokens, temperature 1) and prints one JSON line: the SHA-256 of the optimized,
scheduled HLO with what does not change the program taken out (source locations, stack frames,
the numbering of instruction and computation names), its line count, and the SHA-256 of the
sampled tokens. Two trees with the same fingerprint run the same XLA program, so a refactor
that keeps it needs no timing to be "within noise"; `--out` writes the normalised HLO for a diff.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

from tailor_jax.parallel.cpu import configure_cpu_devices


def normalised_hlo(text: str) -> str:
    body = text[text.find("\n%"):]  # the computations, without the header's file/stack-frame tables
    body = re.sub(r",? ?stack_frame_id=\d+", "", body)
    body = re.sub(r", metadata=\{[^}]*\}", "", body)
    body = re.sub(r"(%?[A-Za-z_][\w\-]*)(\.\d+)+", r"\1", body)  # name numbering
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the normalised HLO here")
    args = parser.parse_args()
    configure_cpu_devices()
    import numpy as np

    from tailor_jax.model import create_model, get_preset
    from tailor_jax.parallel.mesh import MeshConfig, create_mesh
    from tailor_jax.sampling import Sampler

    mesh_cfg = MeshConfig.auto()
    mesh, rules = create_mesh(mesh_cfg), mesh_cfg.axis_rules()
    model = create_model(get_preset("bench-tiny"), mesh=mesh, rules=rules)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 4096, 64).tolist() for _ in range(16)]
    sampler = Sampler(model, mesh=mesh, rules=rules)
    out = sampler.generate(prompts, max_new_tokens=128, temperature=1.0, num_samples=8, eos_token_ids=[], seed=0)
    (program,) = sampler._programs.values()
    hlo = normalised_hlo(program.as_text())
    if args.out:
        args.out.write_text(hlo)
    print(json.dumps({"hlo_sha256": hashlib.sha256(hlo.encode()).hexdigest(), "hlo_lines": hlo.count("\n"),
                      "tokens_sha256": hashlib.sha256(out.token_array.tobytes()).hexdigest()}))


if __name__ == "__main__":
    main()
