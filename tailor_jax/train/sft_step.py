"""SFT's pure core, testable with arrays alone: the loss (`sft_loss`), position-id gaps, and the
jitted-step builders (`make_train_step`, `make_eval_step`) that the trainer (train/sft.py) and
the memory plan (train/memory_plan.py, which compiles the step the trainer runs) both use."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tailor_jax.model.logprobs import DEFAULT_CHUNK_TOKENS, model_token_logprobs
from tailor_jax.train.guard import finite_flag, keep_if_finite
from tailor_jax.train.sft_config import PositionGapsConfig
from tailor_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def sft_loss(params: nnx.State, graphdef: nnx.GraphDef, rest: nnx.State, batch: Batch,
             chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """Summed masked NLL of a batch (the caller divides by the token count), with
    (token count, number of correct argmax predictions) as aux. The vocabulary projection runs
    `chunk_tokens` tokens at a time (`model.logprobs`): no [rows, T, V] logits."""
    model = nnx.merge(graphdef, params, rest)
    hidden = model.hidden_states(batch["inputs"], batch["positions"], segment_ids=batch["segment_ids"])
    stats = model_token_logprobs(model, hidden, batch["targets"], chunk_tokens=chunk_tokens, correct=True)
    mask = batch["loss_mask"] > 0
    nll_sum = -jnp.where(mask, stats.logp, 0.0).sum()
    correct = jnp.where(mask, stats.correct, 0.0).sum()
    return nll_sum, (mask.sum().astype(jnp.float32), correct)


def gapped_positions(positions: jax.Array, segment_ids: jax.Array, key: jax.Array, gaps: PositionGapsConfig) -> jax.Array:
    """Position ids with random gaps inside each packed example (see `PositionGapsConfig`).

    `positions` [rows, length] count 0, 1, 2, ... within each example (0 starts an example);
    `segment_ids` number the examples of a row. Examples drawn as contiguous keep their positions.
    """
    rows, length = positions.shape
    gap_key, size_key, keep_key = jax.random.split(key, 3)
    gap = jnp.where(
        jax.random.uniform(gap_key, (rows, length)) < gaps.prob,
        jax.random.randint(size_key, (rows, length), 1, gaps.max_gap + 1),
        0,
    )
    contiguous = jax.random.uniform(keep_key, (rows, length)) < gaps.contiguous  # indexed by segment id
    contiguous = jnp.take_along_axis(contiguous, jnp.clip(segment_ids, 0, length - 1), axis=1)
    starts = positions == 0
    total = jnp.cumsum(jnp.where(contiguous | starts, 0, gap), axis=1)
    # `total` never decreases, so its running max over example starts is its value at this example's start.
    at_start = jax.lax.cummax(jnp.where(starts, total, 0), axis=1)
    return positions + total - at_start


def _split_micro(batch: Batch, accum_steps: int) -> Batch:
    return jax.tree.map(lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    accum_steps: int = 1,
    lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
    position_gaps: PositionGapsConfig | None = None,
    skip_nonfinite: bool = False,
    logprob_chunk: int = DEFAULT_CHUNK_TOKENS,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """`step(state, batch) -> (state, metrics)`: the token-mean loss over the whole batch,
    its gradient accumulated over `accum_steps` equal micro-batches (so the update does not
    depend on `accum_steps`), one optimizer update. With `position_gaps` on, the batch's
    position ids get gaps drawn from the state's RNG (so a resumed run draws the same ones).
    `metrics["finite"]`: the loss and gradient norm are finite (train/guard.py); with
    `skip_nonfinite` a step where they are not leaves the parameters and optimizer state as they were."""
    value_and_grad_fn = jax.value_and_grad(functools.partial(sft_loss, chunk_tokens=logprob_chunk), has_aux=True)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng, step_key = jax.random.split(jax.random.wrap_key_data(state.rng))
        if position_gaps is not None and position_gaps.prob > 0:
            positions = gapped_positions(batch["positions"], batch["segment_ids"], step_key, position_gaps)
            batch = {**batch, "positions": positions}
        micro = _split_micro(batch, accum_steps)

        def accumulate(carry, micro_batch):
            grads, nll, count, correct = carry
            (m_nll, (m_count, m_correct)), m_grads = value_and_grad_fn(state.params, graphdef, state.rest, micro_batch)
            grads = jax.tree.map(jnp.add, grads, m_grads)
            return (grads, nll + m_nll, count + m_count, correct + m_correct), None

        if accum_steps == 1:  # no zero-initialised gradient buffer to add into
            (nll, (count, correct)), grads = value_and_grad_fn(state.params, graphdef, state.rest, batch)
        else:
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (zeros, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
            (grads, nll, count, correct), _ = jax.lax.scan(accumulate, init, micro)
        denom = jnp.maximum(count, 1.0)
        # in the parameters' dtype: dividing by the float32 count would make a float32 copy of every gradient
        grads = jax.tree.map(lambda g: (g / denom).astype(g.dtype), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = finite_flag(nll, grad_norm)
        if skip_nonfinite:
            params, opt_state = keep_if_finite(finite, (params, opt_state), (state.params, state.opt_state))
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng)
        )
        metrics = {
            "loss": nll / denom,
            "token_accuracy": correct / denom,
            "num_tokens": count,
            "grad_norm": grad_norm,
            "finite": finite,
        }
        if lr_schedule is not None:
            metrics["learning_rate"] = lr_schedule(state.step)
        return new_state, metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, logprob_chunk: int = DEFAULT_CHUNK_TOKENS) -> Callable[[TrainState, Batch], dict]:
    """`eval_step(state, batch) -> {"nll_sum", "num_tokens", "correct"}` (sums; the caller
    divides after summing over the eval set)."""

    def eval_step(state: TrainState, batch: Batch) -> dict:
        nll, (count, correct) = sft_loss(state.params, graphdef, state.rest, batch, logprob_chunk)
        return {"nll_sum": nll, "num_tokens": count, "correct": correct}

    return eval_step
