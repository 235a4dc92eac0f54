"""Supervised fine-tuning: masked next-token cross-entropy on completion tokens.

Pure core (testable with arrays alone): `masked_nll`, `sft_loss`, `make_train_step`,
`make_eval_step`. The stateful shell (`train`, the `tailor-jax sft` command) adds data,
checkpoints, metrics, evaluation and signal handling around it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tailor_jax.train.state import TrainState

Batch = dict[str, jax.Array]


# ---------------------------------------------------------------------------------------
# Pure core.
def masked_nll(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of -log p(target) over masked positions, number of masked positions)."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    mask = loss_mask.astype(jnp.bool_)
    return jnp.where(mask, nll, 0.0).sum(), mask.sum().astype(jnp.float32)


def sft_loss(params: nnx.State, graphdef: nnx.GraphDef, rest: nnx.State, batch: Batch):
    """Summed masked NLL of a batch (the caller divides by the token count), with
    (token count, number of correct argmax predictions) as aux."""
    model = nnx.merge(graphdef, params, rest)
    logits, _ = model(batch["inputs"], batch["positions"], segment_ids=batch["segment_ids"])
    nll_sum, count = masked_nll(logits, batch["targets"], batch["loss_mask"])
    correct = jnp.where(batch["loss_mask"] > 0, logits.argmax(-1) == batch["targets"], False).sum()
    return nll_sum, (count, correct.astype(jnp.float32))


def _split_micro(batch: Batch, accum_steps: int) -> Batch:
    return jax.tree.map(lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    accum_steps: int = 1,
    lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """`step(state, batch) -> (state, metrics)`: the token-mean loss over the whole batch,
    its gradient accumulated over `accum_steps` equal micro-batches (so the update does not
    depend on `accum_steps`), one optimizer update."""
    value_and_grad_fn = jax.value_and_grad(sft_loss, has_aux=True)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        micro = _split_micro(batch, accum_steps)

        def accumulate(carry, micro_batch):
            grads, nll, count, correct = carry
            (m_nll, (m_count, m_correct)), m_grads = value_and_grad_fn(state.params, graphdef, state.rest, micro_batch)
            grads = jax.tree.map(jnp.add, grads, m_grads)
            return (grads, nll + m_nll, count + m_count, correct + m_correct), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
        (grads, nll, count, correct), _ = jax.lax.scan(accumulate, init, micro)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng)
        )
        metrics = {
            "loss": nll / denom,
            "token_accuracy": correct / denom,
            "num_tokens": count,
            "grad_norm": optax.tree.norm(grads),
        }
        if lr_schedule is not None:
            metrics["learning_rate"] = lr_schedule(state.step)
        return new_state, metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef) -> Callable[[TrainState, Batch], dict]:
    """`eval_step(state, batch) -> {"nll_sum", "num_tokens", "correct"}` (sums; the caller
    divides after summing over the eval set)."""

    def eval_step(state: TrainState, batch: Batch) -> dict:
        nll, (count, correct) = sft_loss(state.params, graphdef, state.rest, batch)
        return {"nll_sum": nll, "num_tokens": count, "correct": correct}

    return eval_step
