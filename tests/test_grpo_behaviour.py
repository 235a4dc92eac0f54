"""GRPO options against direct references: dynamic sampling replacing zero-variance groups,
`mask_truncated_completions`, `tis_cap`, `num_iterations > 1`; and a toy task (the digit reward
of grpo_toy.py) whose reward rises within a few steps."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import pytest

from tailor_jax.config import OptimizerConfig, load_config
from tailor_jax.model import load_pretrained
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.tasks.gf import GFChain
from tailor_jax.train import grpo as gt
from tailor_jax.model.logprobs import logprobs_from_logits
from tailor_jax.train.grpo import grpo_loss
from tailor_jax.train.optim import make_optimizer
from tailor_jax.train.state import create_train_state

from grpo_toy import digit_share, make_tiny_init

SINGLE_DEVICE = "mesh={data: 1, fsdp: 1, tensor: 1}"


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    return make_tiny_init(tmp_path_factory.mktemp("init"))


def overrides(init_dir, run_dir, *extra: str) -> list[str]:
    return [
        f"run_dir={run_dir}", f"init={init_dir}", "task=gf", "task_options={steps: '1-2', p: 11}",
        "rollout.prompts_per_step=4", "rollout.num_generations=4", "rollout.max_new_tokens=16",
        "optimizer.lr=0.001", "steps=1", "progress=false", "checkpoint.async_save=false", SINGLE_DEVICE, *extra,
    ]


@pytest.fixture
def digit_reward(monkeypatch):
    monkeypatch.setattr(GFChain, "reward", lambda self, fn, record, completion, *, finished=True: digit_share(completion))


# --- dynamic sampling ------------------------------------------------------------------------
def _fake_round(table: dict[int, list[list[float]]]):
    """A stand-in for `sample_round`: round r's groups get the rewards table[r]; every row's
    tokens name (round, group, row) so the kept rows can be traced back."""

    def sample_round(cfg, sampler, tokenizer, records, step, round_):
        rewards = np.asarray(table[round_], np.float32)  # [groups, g]
        groups, g = rewards.shape
        ids = [f"r{round_}-{i}" for i in range(groups)]
        tokens = np.array([[round_, i, j] for i in range(groups) for j in range(g)], np.int32)
        return gt.Rollout(
            records=[{"id": i} for i in ids], prompt_ids=[[i] for i in range(groups) for _ in range(g)], tokens=tokens,
            logprobs=np.zeros(tokens.shape, np.float32), lengths=np.full(groups * g, 3), finished=np.ones(groups * g, bool),
            rewards=rewards.reshape(-1), components={"binary": rewards.reshape(-1)}, sampler_seconds=1.0,
        )

    return sample_round


ROUNDS = {
    0: [[0, 0], [0, 1], [1, 1], [1, 0]],  # groups 1 and 3 vary
    1: [[0, 1], [0, 0], [1, 0], [0, 1]],  # groups 0, 2, 3 vary
    2: [[1, 0], [0, 1], [1, 0], [0, 1]],
}


@pytest.mark.parametrize(
    "max_rounds, table, expected_ids, rounds, filled",
    [
        (3, ROUNDS, ["r0-1", "r0-3", "r1-0", "r1-2"], 2, 0),  # refilled from round 1, cut to 4 groups
        (0, ROUNDS, ["r0-1", "r0-3", "r0-0", "r0-2"], 1, 2),  # no extra round: zero-variance groups fill
        (1, {0: ROUNDS[0], 1: [[1, 1]] * 4}, ["r0-1", "r0-3", "r0-0", "r0-2"], 2, 2),  # the extra round gave none
    ],
)
def test_dynamic_sampling_replaces_zero_variance_groups(init_dir, tmp_path, monkeypatch, max_rounds, table,
                                                        expected_ids, rounds, filled):
    cfg = load_config(gt.GRPOConfig, None, [
        *overrides(init_dir, tmp_path), "rollout.num_generations=2", "dynamic_sampling.enabled=true",
        f"dynamic_sampling.max_rounds={max_rounds}"])
    monkeypatch.setattr(gt.rollout, "sample_round", _fake_round(table))
    rollout, stats = gt.collect_rollout(cfg, None, None, 1, None)
    assert [r["id"] for r in rollout.records] == expected_ids
    # every row is the row of its group in its round: tokens, rewards and prompts moved together
    want_tokens = [[int(i[1]), int(i[3]), j] for i in expected_ids for j in range(2)]
    assert rollout.tokens.tolist() == want_tokens
    assert rollout.rewards.tolist() == [table[int(i[1])][int(i[3])][j] for i in expected_ids for j in range(2)]
    assert rollout.prompt_ids == [[int(i[3])] for i in expected_ids for _ in range(2)]
    # compute accounting counts every round's rows, the discarded groups' too (4 groups x G=2, 3 tokens each)
    assert stats == {"frac_reward_zero_std": 0.5, "dynamic_sampling/rounds": float(rounds),
                     "dynamic_sampling/filled_zero_std_groups": float(filled),
                     "compute/sampler_calls": float(rounds), "compute/rows_generated": 8.0 * rounds,
                     "compute/tokens_generated": 24.0 * rounds}
    zero = rollout.rewards.reshape(-1, 2).std(axis=1) == 0
    assert zero.sum() == filled and not zero[: 4 - filled].any()  # varying groups first


# --- tis_cap: the trainer's accumulate against grpo_loss with truncated importance weights ------
def test_tis_cap_weights_the_policy_loss(init_dir):
    mesh = create_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    model = load_pretrained(init_dir, dtype="float32")
    graphdef, state = create_train_state(model, make_optimizer(OptimizerConfig(lr=1e-3), 1), 0, mesh)
    rng = np.random.default_rng(1)
    n, c = 8, 6
    rows = gt.build_rows([[5, 6, 7]] * 4 + [[8, 9]] * 4, rng.integers(3, 100, size=(n, c)), rng.integers(2, c + 1, size=n), 0)
    rows["advantages"] = rng.normal(size=n).astype(np.float32)
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    logp = np.asarray(jax.jit(gt.make_logp_fn(graphdef, 1.0))(state.params, state.rest, batch))
    # sampler log-probs 0..2 nats below the trainer's: ratios 1..7.4, so a cap of 2 binds on some tokens
    sampler_logp = (logp - rng.uniform(0, 2, size=logp.shape)).astype(np.float32)
    old_logp = (logp + rng.normal(scale=0.05, size=logp.shape)).astype(np.float32)
    batch.update(sampler_logp=jnp.asarray(sampler_logp), old_logp=jnp.asarray(old_logp))
    weights = np.minimum(np.exp(logp - sampler_logp), 2.0)
    assert (weights == 2.0).any() and (weights < 2.0).any()

    def direct(params, importance_weights):
        # untiled reference: full logits from the trainer's completion hidden states
        model = nnx.merge(graphdef, params, state.rest)
        logp = logprobs_from_logits(model.logits(gt.update._completion_hidden(model, batch)), batch["tokens"])
        return grpo_loss(logp, old_logp, None, rows["advantages"], rows["completion_mask"], epsilon_low=0.2,
                         epsilon_high=0.2, max_len=c, importance_weights=importance_weights)[0]

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    results = {}
    for cap in (None, 2.0):
        acc = jax.jit(gt.make_accumulate_fn(graphdef, gt.LossConfig(tis_cap=cap), 1.0, c))
        results[cap], _ = acc(zeros, state.params, state.rest, batch, jnp.float32(1.0))
    reference_grad = jax.jit(jax.grad(direct))
    for cap, reference in ((2.0, reference_grad(state.params, jnp.asarray(weights))), (None, reference_grad(state.params, None))):
        for got, want in zip(jax.tree.leaves(results[cap]), jax.tree.leaves(reference)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(results[2.0]), jax.tree.leaves(results[None])))


# --- mask_truncated_completions and num_iterations, in a trainer step ----------------------------
@pytest.fixture(scope="module")
def spied_step(init_dir, tmp_path_factory):
    """One trainer step with mask_truncated_completions, num_iterations=2 and tis_cap, the digit
    reward, and every other completion marked truncated; returns what the step saw and made."""
    run_dir = tmp_path_factory.mktemp("spied")
    cfg = load_config(gt.GRPOConfig, None, overrides(init_dir, run_dir, "loss.mask_truncated_completions=true",
                                                     "loss.num_iterations=2", "loss.tis_cap=2.0"))
    seen: dict = {}
    patch = pytest.MonkeyPatch()
    real_collect, real_pack = gt.collect_rollout, gt.pack_micro_batches

    def collect(*args, **kwargs):
        rollout, stats = real_collect(*args, **kwargs)
        rollout = dataclasses.replace(rollout, finished=np.arange(len(rollout.lengths)) % 2 == 0)
        seen["rollout"] = rollout
        return rollout, stats

    def pack(rows, index, micro, **kwargs):
        seen["rows"] = {k: v.copy() for k, v in rows.items()}
        seen["pack"] = (index, micro, kwargs)
        return real_pack(rows, index, micro, **kwargs)

    patch.setattr(GFChain, "reward", lambda self, fn, record, completion, *, finished=True: digit_share(completion))
    patch.setattr(gt.trainer, "collect_rollout", collect)  # where the trainer and the update look them up
    patch.setattr(gt.update, "pack_micro_batches", pack)
    try:
        result = gt.train(cfg)
    finally:
        patch.undo()
    return cfg, seen, result


def test_mask_truncated_completions_drops_truncated_rows(spied_step):
    cfg, seen, result = spied_step
    rollout, rows = seen["rollout"], seen["rows"]
    width = rows["tokens"].shape[1]
    lengths_mask = np.arange(width)[None, :] < rollout.lengths[:, None]
    assert lengths_mask[~rollout.finished].any()  # the truncated rows had tokens to drop
    np.testing.assert_array_equal(rows["completion_mask"], lengths_mask * rollout.finished[:, None])
    assert result.history[-1]["num_tokens"] == rollout.lengths[rollout.finished].sum()


def test_num_iterations_makes_that_many_updates_on_one_rollout(spied_step, init_dir):
    """The reference: the trainer's jitted pieces on the same rows, two optimizer updates, each
    accumulating fresh gradients with the sampler's log-probs as the old policy."""
    cfg, seen, result = spied_step
    rollout, rows = seen["rollout"], seen["rows"]
    assert rollout.rewards.reshape(-1, 4).std(axis=1).max() > 0  # a non-zero update
    np.testing.assert_array_equal(rows["old_logp"], rollout.logprobs)
    mesh = create_mesh(cfg.mesh)
    tx = make_optimizer(cfg.optimizer, cfg.steps * cfg.loss.num_iterations)
    graphdef, state = create_train_state(load_pretrained(init_dir), tx, cfg.seed, mesh)
    accumulate = jax.jit(gt.make_accumulate_fn(graphdef, cfg.loss, 1.0, cfg.rollout.max_new_tokens))
    apply = jax.jit(gt.make_apply_fn(tx))
    index, micro, kwargs = seen["pack"]
    batches = gt.pack_micro_batches(rows, index, micro, **kwargs)
    total = rows["completion_mask"].sum()
    params_after = []
    for _ in range(2):
        grads = jax.tree.map(jnp.zeros_like, state.params)
        for b in batches:
            grads, _ = accumulate(grads, state.params, state.rest, {k: jnp.asarray(v) for k, v in b.items()},
                                  jnp.float32(b["completion_mask"].sum() / total))
        state, _ = apply(state, grads)
        params_after.append(jax.device_get(state.params))
    got = jax.tree.leaves(jax.device_get(result.state.params))
    assert int(result.state.step) == 2
    for a, b in zip(got, jax.tree.leaves(params_after[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not all(np.allclose(a, b, atol=1e-7) for a, b in zip(got, jax.tree.leaves(params_after[0])))


# --- a toy task whose reward rises ----------------------------------------------------------------
def test_reward_rises_on_a_toy_task(init_dir, tmp_path, digit_reward):
    """Reward = the share of digits in the completion: a random tiny model writes ~3% digits; a
    dozen GRPO steps raise that many-fold (0.03 -> ~0.6 in the run that set these bounds)."""
    cfg = load_config(gt.GRPOConfig, None, overrides(init_dir, tmp_path, "steps=12", "optimizer.lr=0.03",
                                                     "checkpoint.every_steps=100"))
    rewards = [h["reward"] for h in gt.train(cfg).history]
    first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert len(rewards) == 12 and last > 0.25 and last > 4 * first, rewards
