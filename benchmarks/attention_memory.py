"""Compiled memory of one SFT-style micro-batch gradient, per attention implementation x remat policy.

    python benchmarks/attention_memory.py [--presets qwen2.5-0.5b:4x1024,qwen2.5-1.5b:8x2048]
        [--attention dense,chunked,xla] [--remat none,full,dots,dots_no_batch] [--out PATH]

Nothing runs and nothing is allocated: the parameters are abstract (`nnx.eval_shape`), the batch
is `jax.ShapeDtypeStruct`s (tokens, positions and segment ids of packed rows, as the SFT step
feeds them), and for each combination `jax.jit(grad).lower(...).compile()` gives XLA's
`memory_analysis().temp_size_in_bytes` on this machine's CPU backend: the temporaries of one
gradient, beyond parameters, inputs and outputs.

The loss is the float32 sum of the final-norm hidden states, NOT a cross-entropy over logits:
this measures the decoder stack (attention and remat), and leaves out the LM head, whose
[rows, T, vocab] logits are a separate problem (vocabulary-tiled log-probs, issue #22 item 1).
Presets keep their dtypes (bfloat16 parameters and compute).

Prints a table and writes benchmarks/results/attention_memory.json with the git commit and date.
On a checkout from before `attention` / remat policies existed (tailor-jax <= 62d6516), it
measures what that code has: attention "dense" (the only one) and remat none/full (false/true).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if "--keep-barrier-expander" not in sys.argv:  # see the module docstring
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_disable_hlo_passes=cse_barrier_expander").strip()

import jax
import jax.numpy as jnp
from flax import nnx

from tailor_jax.model import get_preset
from tailor_jax.model.config import ModelConfig
from tailor_jax.model.transformer import Transformer

HERE = Path(__file__).resolve().parent
GIB = 2**30
HAS_OPTIONS = "attention" in {f.name for f in dataclasses.fields(ModelConfig)}


def parse_presets(text: str) -> list[tuple[str, int, int]]:
    out = []
    for item in text.split(","):
        name, shape = item.split(":")
        rows, length = shape.split("x")
        out.append((name, int(rows), int(length)))
    return out


def config_for(preset: str, attention: str, remat: str) -> ModelConfig:
    cfg = get_preset(preset)
    if HAS_OPTIONS:
        return cfg.replace(attention=attention, remat=remat)
    if attention != "dense" or remat not in ("none", "full"):
        raise ValueError(f"this checkout has only attention=dense and remat none/full, not {attention}/{remat}")
    return cfg.replace(remat=remat == "full")


def compiled_temporaries(cfg: ModelConfig, rows: int, length: int) -> tuple[int, float]:
    """Temporary bytes of the compiled gradient of sum(hidden) w.r.t. every parameter, and compile seconds."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    ints = jax.ShapeDtypeStruct((rows, length), jnp.int32)

    def loss(state, tokens, positions, segment_ids):
        model = nnx.merge(graphdef, state)
        hidden, _ = model(tokens, positions, segment_ids=segment_ids, return_hidden=True)
        return hidden.astype(jnp.float32).sum()

    start = time.perf_counter()
    compiled = jax.jit(jax.grad(loss)).lower(state, ints, ints, ints).compile()
    return compiled.memory_analysis().temp_size_in_bytes, time.perf_counter() - start


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True).stdout
        return out.stdout.strip() + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="qwen2.5-0.5b:4x1024,qwen2.5-1.5b:8x2048",
                        help="comma list of preset:ROWSxLENGTH")
    parser.add_argument("--attention", default="dense,chunked,xla" if HAS_OPTIONS else "dense")
    parser.add_argument("--remat", default="none,full,dots,dots_no_batch" if HAS_OPTIONS else "none,full")
    parser.add_argument("--out", default=str(HERE / "results" / "attention_memory.json"))
    parser.add_argument("--keep-barrier-expander", action="store_true",
                        help="compile with XLA's default CPU passes, which drop remat's barriers (the pre-#22 measure)")
    parser.add_argument("--label", default=None, help="a note stored with the results (e.g. 'before')")
    args = parser.parse_args()

    results = []
    print(f"{'preset':14} {'shape':>8} {'attention':>9} {'remat':>14} {'temp GiB':>9} {'compile s':>9}", flush=True)
    for preset, rows, length in parse_presets(args.presets):
        for attention in args.attention.split(","):
            for remat in args.remat.split(","):
                temp, seconds = compiled_temporaries(config_for(preset, attention, remat), rows, length)
                results.append(dict(preset=preset, rows=rows, length=length, attention=attention, remat=remat,
                                    temp_bytes=temp, temp_gib=round(temp / GIB, 3), compile_s=round(seconds, 1)))
                print(f"{preset:14} {rows}x{length:<6} {attention:>9} {remat:>14} {temp / GIB:9.2f} {seconds:9.1f}",
                      flush=True)
    record = dict(
        benchmark="attention_memory", commit=git_commit(), date=datetime.datetime.now(datetime.UTC).isoformat(),
        label=args.label, xla_flags=os.environ.get("XLA_FLAGS", ""), jax=jax.__version__, backend=jax.default_backend(),
        loss="float32 sum of final-norm hidden states (no LM head)", results=results,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
