"""Checkpoint save/restore timings (tailor_jax.train.checkpoint) on the local devices.

    python benchmarks/checkpoint_io.py [--layers 24] [--repeats 3] [--quickstart] [--out FILE.json]

State: `layers` float32 1024x1024 matrices + biases (25.2 M parameters for 24) and their
AdamW state; with --quickstart, the parameters of configs/quickstart.yaml's SFT model (the
tiny preset at its overrides, vocabulary 512) and their AdamW state. Prints one JSON line per mode (async / sync) and a short table: time the training
loop is blocked by `save`, time until the checkpoint is complete (sealed), writing the manifest
alone (file sizes and CRC-32s; part of the time to complete), checking it, and restore; median
of `repeats` saves with min and max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from tailor_jax.config import CheckpointConfig
from tailor_jax.train.checkpoint import (
    MANIFEST_NAME, Checkpointer, TrainCheckpoint, abstract_like, check_manifest, write_manifest,
)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def quickstart_params():
    """The trainable parameters of configs/quickstart.yaml's SFT model (from scratch, vocabulary 512)."""
    import yaml
    from flax import nnx

    from tailor_jax.model import get_preset
    from tailor_jax.model.transformer import create_model

    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "quickstart.yaml").read_text())
    model_cfg = get_preset("tiny").replace(**config["sft"]["model"]["overrides"], vocab_size=512)
    return nnx.state(create_model(model_cfg), nnx.Param)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quickstart", action="store_true", help="the quickstart SFT model's state instead")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()

    params = quickstart_params() if args.quickstart else {
        f"layer{i}": {"w": jax.random.normal(jax.random.key(i), (1024, 1024)), "b": jnp.zeros(1024)}
        for i in range(args.layers)
    }
    opt_state = jax.block_until_ready(optax.adamw(1e-3).init(params))
    num_params = sum(x.size for x in jax.tree.leaves(params))
    num_bytes = sum(x.nbytes for x in jax.tree.leaves((params, opt_state)))
    target = TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state))
    rows = []
    for async_save in (True, False):
        timings: dict[str, list[float]] = {"save_blocking_s": [], "save_complete_s": [], "manifest_write_s": [],
                                           "manifest_check_s": [], "restore_s": []}
        with tempfile.TemporaryDirectory() as directory:
            with Checkpointer(directory, CheckpointConfig(keep=2, async_save=async_save)) as checkpointer:
                for step in range(1, args.repeats + 1):
                    start = time.perf_counter()
                    checkpointer.save(TrainCheckpoint(step, params, opt_state, jax.random.key(0)))
                    returned = time.perf_counter()
                    checkpointer.wait()
                    done = time.perf_counter()
                    (checkpointer.step_dir(step) / MANIFEST_NAME).unlink()
                    resealing = time.perf_counter()
                    write_manifest(checkpointer.step_dir(step))  # again, timed alone: part of save_complete_s
                    sealed = time.perf_counter()
                    assert check_manifest(checkpointer.step_dir(step)) is None
                    checked = time.perf_counter()
                    restored = checkpointer.restore(target, step=step)
                    jax.block_until_ready((restored.params, restored.opt_state))
                    timings["save_blocking_s"].append(returned - start)
                    timings["save_complete_s"].append(done - start)
                    timings["manifest_write_s"].append(sealed - resealing)
                    timings["manifest_check_s"].append(checked - sealed)
                    timings["restore_s"].append(time.perf_counter() - checked)
        row = {
            "benchmark": "checkpoint_io",
            "mode": "async" if async_save else "sync",
            "state": "quickstart" if args.quickstart else f"{args.layers}x1024x1024",
            "devices": f"{jax.device_count()}x{jax.devices()[0].platform}",
            "params_m": round(num_params / 1e6, 1),
            "megabytes": round(num_bytes / 1e6),
            **{name: summary(values) for name, values in timings.items()},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{'mode':6} {'blocking s':>11} {'complete s':>11} {'seal s':>8} {'check s':>8} {'restore s':>10}")
    for row in rows:
        print(
            f"{row['mode']:6} {row['save_blocking_s']['median']:11.3f} {row['save_complete_s']['median']:11.3f} "
            f"{row['manifest_write_s']['median']:8.3f} {row['manifest_check_s']['median']:8.3f} {row['restore_s']['median']:10.3f}"
        )


if __name__ == "__main__":
    main()
