"""A tiny deterministic training run used by test_checkpoint.py in subprocesses.

    python tests/ckpt_worker.py RUN_DIR --steps N --every K [--kill-at S] [--kill-sealing S] [--term-at S] [--sync] --out OUT.npz

Toy NNX MLP + optax AdamW; each step draws its batch from the data position and its noise from
the carried RNG key, so an exact resume must restore params, optimizer state, key and position.
--kill-at S: SIGKILL itself right after step S (and after starting that step's save, if any).
--kill-sealing S: SIGKILL itself in the middle of writing step S's checkpoint: Orbax has committed
    the arrays, the manifest is half written, the older steps are not yet rotated away.
--term-at S: send itself SIGTERM during step S; the preemption flag must make it save S and exit 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tailor_jax.config import CheckpointConfig
from tailor_jax.train.checkpoint import Checkpointer, TrainCheckpoint, abstract_like
from tailor_jax.train.preemption import install_preemption_handler


class ToyModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.gelu(self.norm(self.hidden(x))))


def batch_at(position: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(position)
    x = gen.normal(size=(8, 4)).astype(np.float32)
    return x, np.sin(x.sum(axis=1, keepdims=True))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--term-at", type=int)
    parser.add_argument("--kill-sealing", type=int)
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()

    graphdef, params = nnx.split(ToyModel(nnx.Rngs(0)), nnx.Param)
    optimizer = optax.adamw(1e-2, weight_decay=0.01)
    opt_state = optimizer.init(params)
    rng = jax.random.key(42)
    data_state = {"position": 0}

    @jax.jit
    def train_step(params, opt_state, rng, x, y):
        rng, noise_key = jax.random.split(rng)

        def loss_fn(p):
            noisy = x + 0.1 * jax.random.normal(noise_key, x.shape)
            return jnp.mean((nnx.merge(graphdef, p)(noisy) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng, loss

    if args.kill_sealing is not None:
        from tailor_jax.train import checkpoint as checkpoint_lib

        seal = checkpoint_lib.write_manifest

        def seal_or_die(step_dir):
            if step_dir.name == str(args.kill_sealing):
                (step_dir / "tailor_manifest.json.tmp").write_text('{"format": 2, "fi')
                os.kill(os.getpid(), signal.SIGKILL)
            seal(step_dir)

        checkpoint_lib.write_manifest = seal_or_die
    preemption = install_preemption_handler()
    cfg = CheckpointConfig(every_steps=args.every, keep=2, async_save=not args.sync)
    with Checkpointer(os.path.join(args.run_dir, "checkpoints"), cfg) as checkpointer:
        target = TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state), rng)
        restored = checkpointer.restore_latest(target)
        start = 0
        if restored is not None:
            start, params, opt_state, rng = restored.step, restored.params, restored.opt_state, restored.rng_key
            data_state = restored.data_state
            print(f"RESUMED_FROM {start}", flush=True)
        for step in range(start + 1, args.steps + 1):
            x, y = batch_at(data_state["position"])
            params, opt_state, rng, loss = train_step(params, opt_state, rng, x, y)
            data_state = {"position": data_state["position"] + 1}
            if step == args.term_at:
                os.kill(os.getpid(), signal.SIGTERM)
            stop = preemption.requested
            if checkpointer.should_save(step) or stop or step == args.steps:
                checkpointer.save(TrainCheckpoint(step, params, opt_state, rng, data_state, {"toy": True}))
            if step == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if stop:
                print(f"STOPPED_AT {step}", flush=True)
                return 0
    if args.out:
        leaves = jax.tree.leaves((params, opt_state)) + [jax.random.key_data(rng)]
        np.savez(args.out, *[np.asarray(leaf) for leaf in leaves], position=data_state["position"])
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
