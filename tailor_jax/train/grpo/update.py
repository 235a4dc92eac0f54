"""The update of one GRPO step, from a rollout to new weights.

`grpo_update` is the step body: advantages -> trainer rows -> DASH filter -> micro-batches ->
(reference log-probs) -> `num_iterations` x (accumulate the micro-batches' gradients -> one
optimizer update). It is a function of the state, the rollout and the jitted pieces made here
(`make_logp_fn`, `make_accumulate_fn`, `make_apply_fn`): no I/O, no sampler, no checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tailor_jax.model.logprobs import DEFAULT_CHUNK_TOKENS, TokenStats, model_token_logprobs
from tailor_jax.train.grpo.config import GRPOConfig, LossConfig
from tailor_jax.train.grpo.loss import group_advantages, grpo_loss, logp_drift_metrics, truncated_importance_weights
from tailor_jax.train.grpo.rollout import Rollout
from tailor_jax.train.grpo.rows import Rows, build_rows, order_by_group_length, pack_micro_batches, select_rows
from tailor_jax.train.guard import finite_flag, keep_if_finite
from tailor_jax.train.state import TrainState


def update_batches(
    cfg: GRPOConfig, rollout: "Rollout", pad_id: int, shards: int = 1
) -> tuple[np.ndarray, np.ndarray, list[Rows], list[float]]:
    """A rollout's update, before any device work: its advantages [N], the rows kept (in
    packing order; DASH drops the others here, so they reach no forward or backward pass), the
    packed micro-batches and each one's loss weight (its share of the FULL batch's denominator).
    It does not depend on how many sampler calls produced the rollout."""
    micro = cfg.dash.micro_batch_size or len(rollout.rewards)
    advantages = np.asarray(group_advantages(jnp.asarray(rollout.rewards), cfg.rollout.num_generations, cfg.loss.scale_rewards))
    rows = build_rows(rollout.prompt_ids, rollout.tokens, rollout.lengths, pad_id)
    if cfg.loss.mask_truncated_completions:
        rows["completion_mask"] *= rollout.finished[:, None].astype(np.float32)
    rows.update(advantages=advantages.astype(np.float32), sampler_logp=rollout.logprobs.astype(np.float32),
                old_logp=rollout.logprobs.astype(np.float32))
    keep = order_by_group_length(select_rows(advantages, cfg.dash.tau, cfg.dash.filter), rollout.lengths,
                                 cfg.rollout.num_generations)
    micro_batches = pack_micro_batches(rows, keep, micro, slot_multiple=shards)
    total_tokens = max(float(rows["completion_mask"].sum()), 1.0)
    weights = [float(b["completion_mask"].sum()) / total_tokens if cfg.loss.loss_agg == "token_mean" else micro / len(advantages)
               for b in micro_batches]
    return advantages, keep, micro_batches, weights



def _completion_hidden(model, batch) -> jax.Array:
    """Final-norm hidden states [N, C, H] predicting each completion token: the first from its
    prompt's last position, the others from the completion itself (prompt positions predict nothing)."""
    prompt_hidden, hidden = model.shared_prefix_forward(
        batch["prompt_tokens"], batch["prompt_positions"], batch["prompt_mask"], batch["row_prompt"],
        batch["tokens"], batch["positions"], batch["completion_mask"] > 0,
    )
    first = prompt_hidden[batch["row_prompt"], -1][:, None]
    return jnp.concatenate([first, hidden[:, :-1]], axis=1)


def completion_stats(graphdef, params, rest, batch, temperature: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                     entropy: bool = False) -> TokenStats:
    """Log-probs [N, C] (and entropy) of the completion tokens, a chunk of tokens at a time."""
    model = nnx.merge(graphdef, params, rest)
    return model_token_logprobs(model, _completion_hidden(model, batch), batch["tokens"], temperature=temperature,
                                chunk_tokens=chunk_tokens, entropy=entropy)


def make_logp_fn(graphdef, temperature: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """`logp(params, rest, batch) -> [n, C]` log-probs of the completion tokens (old / reference log-probs)."""

    def logp_fn(params, rest, batch):
        return completion_stats(graphdef, params, rest, batch, temperature, chunk_tokens).logp

    return logp_fn


def make_accumulate_fn(graphdef, loss_cfg: LossConfig, temperature: float, max_len: int,
                       chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """`acc(grads, params, rest, batch, weight) -> (grads + weight * dloss, metrics)` for one micro-batch.

    `grads=None` (an update's first micro-batch) returns `weight * dloss` itself: no zero-filled
    tree is allocated and added into, so an update of one micro-batch holds one gradient tree, not
    two (a second compiled program when an update has several micro-batches)."""

    def loss_fn(params, rest, batch, weight):
        # One chunked pass over the vocabulary serves the log-probs and the entropy.
        stats = completion_stats(graphdef, params, rest, batch, temperature, chunk_tokens, entropy=True)
        logp = stats.logp
        mask = batch["completion_mask"]
        weights = None
        if loss_cfg.tis_cap is not None:
            weights = truncated_importance_weights(jax.lax.stop_gradient(logp), batch["sampler_logp"], loss_cfg.tis_cap)
        loss, metrics = grpo_loss(
            logp, batch["old_logp"], batch.get("ref_logp"), batch["advantages"], mask,
            epsilon_low=loss_cfg.epsilon_low, epsilon_high=loss_cfg.epsilon_high, beta=loss_cfg.beta,
            kl=loss_cfg.kl, loss_agg=loss_cfg.loss_agg, max_len=max_len,
            policy_gradient=loss_cfg.policy_gradient, importance_weights=weights,
        )
        entropy = jax.lax.stop_gradient(stats.entropy)
        metrics["entropy"] = (entropy * mask).sum() / jnp.maximum(mask.sum(), 1.0)
        metrics.update(logp_drift_metrics(jax.lax.stop_gradient(logp), batch["sampler_logp"], mask))
        return loss * weight, metrics

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def accumulate(grads, params, rest, batch, weight):
        micro_grads, metrics = grad_fn(params, rest, batch, weight)
        if grads is None:
            return micro_grads, metrics
        return jax.tree.map(jnp.add, grads, micro_grads), metrics

    return accumulate


def make_apply_fn(tx: optax.GradientTransformation, skip_nonfinite: bool = False):
    """`apply(state, grads) -> (state, grad norm)`; with `skip_nonfinite` a NaN/inf gradient norm
    leaves the parameters and optimizer state as they were (train/guard.py)."""

    def apply(state: TrainState, grads) -> tuple[TrainState, jax.Array]:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        norm = optax.tree.norm(grads)
        if skip_nonfinite:
            params, opt_state = keep_if_finite(finite_flag(norm), (params, opt_state), (state.params, state.opt_state))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), norm

    return apply



@dataclasses.dataclass(frozen=True)
class UpdateFns:
    """The (jitted) pieces `grpo_update` runs; see `make_accumulate_fn`, `make_apply_fn`, `make_logp_fn`."""

    accumulate: Callable  # (grads or None, params, rest, batch, weight) -> (grads, metrics)
    apply: Callable  # (state, grads) -> (state, grad norm)
    logp: Callable | None = None  # (params, rest, batch) -> log-probs: reference log-probs when beta > 0
    place: Callable[[Rows], dict] = dict  # host rows -> device arrays (`place_rows` on a mesh)


@dataclasses.dataclass
class UpdateResult:
    advantages: np.ndarray  # [N], of every row of the rollout
    keep: np.ndarray  # the rows trained on, in packing order (DASH dropped the others)
    micro_batches: list[Rows]  # the packed host rows
    metrics: dict[str, float]  # the first iteration's loss metrics (token-weighted means; num_tokens summed)
    grad_norm: float  # of the last optimizer update
    finite: bool  # every update's gradient norm was finite
    reference_seconds: float  # rows, packing, placing and reference log-probs
    update_seconds: float  # the optimizer updates


def grpo_update(
    state: TrainState, rollout: Rollout, cfg: GRPOConfig, pad_id: int, fns: UpdateFns, *, shards: int = 1,
    ref_params: nnx.State | None = None,
) -> tuple[TrainState, UpdateResult]:
    """One GRPO step's update of `state` from `rollout` (the step body; see the module docstring).

    Weights change only after all the rollout's micro-batches of an iteration, so the update is
    on-policy however small the micro-batches are. `ref_params` (beta > 0) gives reference
    log-probs through `fns.logp`.
    """
    t0 = time.perf_counter()
    advantages, keep, micro_batches, weights = update_batches(cfg, rollout, pad_id, shards)
    device_batches = [fns.place(b) for b in micro_batches]
    if ref_params is not None:
        for b in device_batches:
            b["ref_logp"] = fns.logp(ref_params, state.rest, b)
    t_ref = time.perf_counter()
    step_metrics: dict[str, float] = {}
    grad_norm, finite = 0.0, True
    for iteration in range(cfg.loss.num_iterations):
        grads = None  # the first micro-batch's gradient starts the sum (`make_accumulate_fn`)
        sums: dict[str, float] = {}
        for b, w in zip(device_batches, weights):
            grads, m = fns.accumulate(grads, state.params, state.rest, b, jnp.float32(w))
            tokens_b = float(m["num_tokens"])
            for k, v in m.items():
                if k == "sampler_trainer/logp_diff_max":
                    sums[k] = max(sums.get(k, 0.0), float(v))
                elif k != "num_tokens":
                    sums[k] = sums.get(k, 0.0) + float(v) * tokens_b
            sums["num_tokens"] = sums.get("num_tokens", 0.0) + tokens_b
        state, norm = fns.apply(state, grads)
        grad_norm = float(norm)  # read every step anyway: the guard costs no extra sync here
        finite = finite and math.isfinite(grad_norm)
        if iteration == 0:
            denom = max(sums["num_tokens"], 1.0)
            step_metrics = {k: (v if k in ("num_tokens", "sampler_trainer/logp_diff_max") else v / denom)
                            for k, v in sums.items()}
    t_end = time.perf_counter()
    return state, UpdateResult(advantages, keep, micro_batches, step_metrics, grad_norm, finite,
                               reference_seconds=t_ref - t0, update_seconds=t_end - t_ref)
