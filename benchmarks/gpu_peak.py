"""Measured peak device memory of one SFT step and one GRPO update micro-batch, next to the estimates
(issue 22's device check; prepared for a GPU, runs anywhere).

A preset model with random weights (qwen2.5-0.5b by default, bf16, remat full, chunked attention),
one stage per process so that the device's peak counter holds that stage alone:
- `sft`: the SFT train step (`train.sft_step.make_train_step`, AdamW) on `--rows` x `--length`
  random tokens;
- `grpo`: one GRPO update micro-batch (`train.grpo.update.make_accumulate_fn`, accumulator
  donated) on `--rows` x (256 + `--length`) tokens, the optimizer state resident beside it;
- `grpograd`: the same micro-batch as an update's first (`grads=None`: no accumulator), the
  trainer's whole update when a step is one micro-batch.
Each stage prints and records three figures in GiB: the memory plan's estimate (the same code as
`tailor-jax run --dry-run`: 1-3 layers compiled on this backend, extrapolated), XLA's memory
analysis of the whole compiled program that then runs (peak = arguments + outputs - aliased +
temporaries + resident), and the device's measured `peak_bytes_in_use` after the step
(`jax.Device.memory_stats()`; CPU has none, so there it is null). On CPU the whole-program figure
also runs high: it is compiled without the CPU-only options the memory plan uses to stand in for
a device (train/memory_plan.py), so the comparison means something on a GPU.

    python benchmarks/gpu_peak.py --stage sft  --out benchmarks/results/gpu_peak_sft.json
    python benchmarks/gpu_peak.py --stage grpo --out benchmarks/results/gpu_peak_grpo.json
    python benchmarks/gpu_peak.py --stage grpograd --out benchmarks/results/gpu_peak_grpograd.json
    python benchmarks/gpu_peak.py --stage sft --preset tiny --rows 2 --length 64   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import commit  # noqa: E402
from tailor_jax.model import get_preset  # noqa: E402
from tailor_jax.model.transformer import Transformer  # noqa: E402
from tailor_jax.parallel.mesh import MeshConfig, create_mesh  # noqa: E402
from tailor_jax.train import memory_plan as mp  # noqa: E402
from tailor_jax.config import OptimizerConfig  # noqa: E402
from tailor_jax.train.optim import make_optimizer  # noqa: E402
from tailor_jax.train.state import create_train_state  # noqa: E402

GIB = 2**30
PROMPT = 256


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=["sft", "grpo", "grpograd"], required=True)
    p.add_argument("--preset", default="qwen2.5-0.5b")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--length", type=int, default=1024, help="SFT tokens per row; GRPO completion tokens")
    p.add_argument("--group", type=int, default=4, help="GRPO completions per prompt")
    p.add_argument("--out", default=None, help="JSON file to write")
    return p.parse_args()


def random_tokens(rng: np.random.Generator, shape, vocab: int) -> jax.Array:
    return jnp.asarray(rng.integers(0, vocab, size=shape, dtype=np.int32))


def sft_inputs(cfg, rows: int, length: int, rng) -> dict:
    tokens = random_tokens(rng, (rows, length + 1), cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": jnp.ones((rows, length), jnp.int32),
            "positions": positions, "segment_ids": jnp.ones((rows, length), jnp.int32)}


def grpo_inputs(cfg, rows: int, length: int, group: int, rng) -> dict:
    prompts = -(-rows // group)
    return {
        "prompt_tokens": random_tokens(rng, (prompts, PROMPT), cfg.vocab_size),
        "prompt_positions": jnp.broadcast_to(jnp.arange(PROMPT, dtype=jnp.int32), (prompts, PROMPT)),
        "prompt_mask": jnp.ones((prompts, PROMPT), jnp.bool_),
        "row_prompt": jnp.arange(rows, dtype=jnp.int32) // group,
        "tokens": random_tokens(rng, (rows, length), cfg.vocab_size),
        "positions": jnp.broadcast_to(PROMPT + jnp.arange(length, dtype=jnp.int32), (rows, length)),
        "completion_mask": jnp.ones((rows, length), jnp.float32),
        "advantages": jnp.asarray(rng.standard_normal(rows), jnp.float32),
        "sampler_logp": jnp.full((rows, length), -2.0, jnp.float32),
        "old_logp": jnp.full((rows, length), -2.0, jnp.float32),
    }


def analysis_gib(compiled, resident: int = 0) -> float:
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes + resident) / GIB


def peak_gib(device) -> float | None:
    stats = device.memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else stats["peak_bytes_in_use"] / GIB


def main() -> None:
    args = parse()
    from tailor_jax.train import sft_step as sft
    from tailor_jax.train.grpo import update as gt

    device = jax.devices()[0]
    mesh = create_mesh(MeshConfig(data=1, fsdp=1, tensor=1), [device])
    cfg = dataclasses.replace(get_preset(args.preset), remat="full", attention="chunked")
    tx = make_optimizer(OptimizerConfig(), 1000)
    t0 = time.perf_counter()
    estimate = (mp.sft_step(mp.AbstractModel.build(cfg, mesh), args.rows, args.length) if args.stage == "sft" else
                mp.grpo_update(mp.AbstractModel.build(cfg, mesh), args.rows, PROMPT, args.length, group=args.group,
                               accumulate=args.stage == "grpo"))
    estimate_s = time.perf_counter() - t0

    graphdef, state = create_train_state(Transformer(cfg, rngs=nnx.Rngs(0)), tx, 0, mesh)
    rng = np.random.default_rng(0)
    if args.stage == "sft":
        fn = jax.jit(sft.make_train_step(graphdef, tx), donate_argnums=0)
        call = (state, sft_inputs(cfg, args.rows, args.length, rng))
        resident = 0
    else:
        accumulate = gt.make_accumulate_fn(graphdef, gt.LossConfig(), 1.0, args.length)
        batch = grpo_inputs(cfg, args.rows, args.length, args.group, rng)
        if args.stage == "grpo":
            fn = jax.jit(accumulate, donate_argnums=0)
            call = (jax.tree.map(jnp.zeros_like, state.params), state.params, state.rest, batch, jnp.float32(1.0))
        else:  # an update's first micro-batch: no accumulator
            fn = jax.jit(functools.partial(accumulate, None))
            call = (state.params, state.rest, batch, jnp.float32(1.0))
        resident = mp.nbytes_per_device(state.opt_state)  # held by `state` while the micro-batch runs
    compiled = fn.lower(*call).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*call))
    run_s = time.perf_counter() - t1
    del out
    measured = peak_gib(device)
    record = {
        "benchmark": "gpu_peak", "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__, "device": device.device_kind, "platform": device.platform,
        "preset": args.preset, "stage": estimate.stage, "shape": estimate.shape,
        "estimate_gib": round(estimate.peak / GIB, 3), "estimate_method": estimate.method, "estimate_s": round(estimate_s, 1),
        "compiled_gib": round(analysis_gib(compiled, resident), 3),
        "measured_peak_gib": None if measured is None else round(measured, 3),
        "step_s": round(run_s, 2),
    }
    print(json.dumps(record))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
