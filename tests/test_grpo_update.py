"""`grpo_update`, the GRPO step body (advantages -> rows -> DASH filter -> micro-batches ->
accumulate -> apply) as one function, on a toy rollout with a tiny random model.

- It gives exactly what the trainer's loop computed inline before it became a function.
- With DASH filtering it trains on the rows with |A| > tau only, and its update is the full
  batch's update with the other rows' advantages set to 0 (their share of the denominator kept),
  which is not the unfiltered update.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tailor_jax.config import load_config
from tailor_jax.model import create_model, get_preset
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.train import grpo as gt
from tailor_jax.train.state import create_train_state

G, PROMPTS, C, PAD = 4, 4, 8, 0
# group advantages (scale "group"): [1.5, -.5, -.5, -.5], [0] * 4, [.87, .87, -.87, -.87], [.5, .5, .5, -1.5]
REWARDS = np.array([1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0], np.float32)
TAU = 0.6  # keeps rows 0, 8, 9, 10, 11, 15 and drops rows with |A| = 0.5 (non-zero: they would change the update)


@pytest.fixture(scope="module")
def toy():
    config = get_preset("tiny").replace(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                        num_kv_heads=1, head_dim=16, bos_token_id=1, eos_token_ids=(2,), pad_token_id=PAD)
    mesh = create_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1])
    tx = optax.sgd(1.0)  # params move by minus the gradient: updates compare as gradients
    graphdef, state = create_train_state(create_model(config, seed=0), tx, 0, mesh)
    rng = np.random.default_rng(0)
    prompts = [[1, *rng.integers(3, 64, size=rng.integers(2, 7)).tolist()] for _ in range(PROMPTS)]
    lengths = rng.integers(2, C + 1, size=PROMPTS * G)
    rollout = gt.Rollout(
        records=[{"id": i} for i in range(PROMPTS)], prompt_ids=[prompts[r // G] for r in range(PROMPTS * G)],
        tokens=rng.integers(3, 64, size=(PROMPTS * G, C)).astype(np.int32),
        logprobs=rng.uniform(-4.0, -0.5, size=(PROMPTS * G, C)).astype(np.float32),
        lengths=lengths, finished=np.ones(PROMPTS * G, bool), rewards=REWARDS.copy(),
        components={"binary": REWARDS.copy()}, sampler_seconds=0.0,
    )
    fns = gt.UpdateFns(accumulate=jax.jit(gt.make_accumulate_fn(graphdef, gt.LossConfig(), 1.0, C)),
                       apply=jax.jit(gt.make_apply_fn(tx)))
    return graphdef, state, rollout, fns


def _cfg(*overrides: str) -> gt.GRPOConfig:
    return load_config(gt.GRPOConfig, None, [
        "run_dir=unused", "init=unused", f"rollout.prompts_per_step={PROMPTS}", f"rollout.num_generations={G}",
        f"rollout.max_new_tokens={C}", *overrides])


def _inline_update(state, rollout, cfg, fns):
    """The update as `grpo_trainer.train` ran it inline (before `grpo_update`), line for line."""
    advantages, keep, micro_batches, weights = gt.update_batches(cfg, rollout, PAD, 1)
    device_batches = [dict(b) for b in micro_batches]
    step_metrics, grad_norm, finite = {}, 0.0, True
    for iteration in range(cfg.loss.num_iterations):
        grads = jax.tree.map(jnp.zeros_like, state.params)
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
        grad_norm = float(norm)
        finite = finite and math.isfinite(grad_norm)
        if iteration == 0:
            denom = max(sums["num_tokens"], 1.0)
            step_metrics = {k: (v if k in ("num_tokens", "sampler_trainer/logp_diff_max") else v / denom)
                            for k, v in sums.items()}
    return state, advantages, keep, step_metrics, grad_norm


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_update_equals_the_loop_it_replaced(toy):
    _, state, rollout, fns = toy
    cfg = _cfg("dash.filter=true", f"dash.tau={TAU}", "dash.micro_batch_size=4", "loss.num_iterations=2")
    new, result = gt.grpo_update(state, rollout, cfg, PAD, fns)
    ref, advantages, keep, metrics, grad_norm = _inline_update(state, rollout, cfg, fns)
    assert int(new.step) == int(ref.step) == 2
    for a, b in zip(_leaves(new), _leaves(ref)):
        np.testing.assert_array_equal(a, b)  # bitwise
    np.testing.assert_array_equal(result.advantages, advantages)
    np.testing.assert_array_equal(result.keep, keep)
    assert result.metrics == metrics and result.grad_norm == grad_norm and result.finite


def test_filtering_trains_on_large_advantages_only(toy):
    _, state, rollout, fns = toy
    cfg = _cfg("dash.filter=true", f"dash.tau={TAU}", "dash.micro_batch_size=4")
    filtered, result = gt.grpo_update(state, rollout, cfg, PAD, fns)
    assert sorted(result.keep.tolist()) == [0, 8, 9, 10, 11, 15]
    assert sorted(result.keep.tolist()) == np.flatnonzero(np.abs(result.advantages) > TAU).tolist()
    kept_tokens = sum(int(rollout.lengths[r]) for r in (0, 8, 9, 10, 11, 15))
    assert result.metrics["num_tokens"] == kept_tokens  # no dropped row reached the loss
    assert len(result.micro_batches) == 2  # 6 kept rows in micro-batches of 4

    # The same update: the whole unfiltered batch in one micro-batch, dropped rows' advantages 0.
    whole_cfg = _cfg("dash.filter=false")
    advantages = np.asarray(result.advantages)
    (_, order, [batch], [weight]) = gt.update_batches(whole_cfg, rollout, PAD, 1)
    assert weight == 1.0 and sorted(order.tolist()) == list(range(PROMPTS * G))  # every row, in packing order
    batch["advantages"] = np.where(np.abs(advantages) > TAU, advantages, 0.0).astype(np.float32)[order]
    grads, _ = fns.accumulate(jax.tree.map(jnp.zeros_like, state.params), state.params, state.rest, batch, jnp.float32(1.0))
    expected, _ = fns.apply(state, grads)
    for a, b in zip(_leaves(filtered), _leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # ... which is not the unfiltered update (the rows with |A| = 0.5 carry gradient)
    unfiltered, whole = gt.grpo_update(state, rollout, _cfg("dash.filter=false", "dash.micro_batch_size=4"), PAD, fns)
    assert len(whole.keep) == PROMPTS * G
    gap = max(float(np.abs(a - b).max()) for a, b in zip(_leaves(unfiltered), _leaves(filtered)))
    assert gap > 1e-3
