"""DASH as the paper runs it: `rollout.generation_batch_size` (standard GRPO = one sampler call per
update micro-batch, preemptive sampling = one call per step) gives the same update from the same
rollouts; a filtered row reaches no forward or backward pass; the compute accounting adds up;
bad generation_batch_size / tau stop at `--dry-run` with one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tailor_jax import run as run_lib
from tailor_jax.config import load_config
from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.errors import TailorError
from tailor_jax.sampling import Sampler
from tailor_jax.sampling.engine import SampleOutput
from tailor_jax.train import grpo as gt
from tailor_jax.train.optim import make_optimizer
from tailor_jax.train.state import create_train_state

from test_grpo_trainer import ROOT, base_overrides, init_dir  # noqa: F401  (init_dir is a fixture)


class PromptOnlySampler:
    """Completions that depend on the prompt and the sample index only (not on the call's
    batch or seed), so one call and several calls must give the same rollout. Records each call."""

    def __init__(self, vocab: int):
        self.vocab, self.calls = vocab, []

    def generate(self, prompts, *, max_new_tokens, num_samples, seed, **_):
        self.calls.append((len(prompts) * num_samples, seed))
        tokens, logprobs, lengths = [], [], []
        for ids in prompts:
            for j in range(num_samples):
                rng = np.random.default_rng([*map(int, ids), j])
                n = int(rng.integers(1, max_new_tokens + 1))
                tokens.append(rng.integers(3, self.vocab, size=n).tolist())
                logprobs.append((-rng.uniform(0.1, 3.0, size=n)).tolist())
                lengths.append(n)
        token_array = np.zeros((len(tokens), max_new_tokens), np.int32)
        logprob_array = np.zeros((len(tokens), max_new_tokens), np.float32)
        for r, (t, lp) in enumerate(zip(tokens, logprobs)):
            token_array[r, : len(t)], logprob_array[r, : len(lp)] = t, lp
        return SampleOutput(tokens, logprobs, lengths, [n < max_new_tokens for n in lengths], num_samples,
                            token_array, logprob_array, seconds=0.01)


def _cfg(init_dir, tmp_path, *extra):
    return load_config(gt.GRPOConfig, None, [*base_overrides(init_dir, tmp_path / "run"), "dash.micro_batch_size=8", *extra])


def test_standard_and_preemptive_sampling_give_the_same_update(init_dir, tmp_path):
    from tailor_jax.model import load_pretrained
    from tailor_jax.parallel.mesh import MeshConfig, create_mesh

    tokenizer = tok_lib.load_tokenizer(init_dir)
    preemptive_cfg = _cfg(init_dir, tmp_path)  # 4 prompts x G 4 = 16 rows, one call
    standard_cfg = _cfg(init_dir, tmp_path, "rollout.generation_batch_size=8")  # a call per 8-row micro-batch
    records = gt.step_records(preemptive_cfg, 1, 0, None)
    rollouts = {}
    for name, cfg in (("preemptive", preemptive_cfg), ("standard", standard_cfg)):
        sampler = PromptOnlySampler(len(tokenizer) - 8)
        rollouts[name] = gt.sample_round(cfg, sampler, tokenizer, records, step=1, round_=0)
        rollouts[name + "_calls"] = sampler.calls
    assert [rows for rows, _ in rollouts["preemptive_calls"]] == [16] and rollouts["preemptive"].sampler_calls == 1
    assert [rows for rows, _ in rollouts["standard_calls"]] == [8, 8] and rollouts["standard"].sampler_calls == 2
    seeds = [seed for _, seed in rollouts["standard_calls"]]
    assert len(set(seeds)) == 2 and seeds == [gt.derive_seed(0, 1, 0, 1, c) for c in (0, 1)]  # pure in the call
    assert rollouts["preemptive_calls"][0][1] == gt.derive_seed(0, 1, 0, 1)  # one call keeps its old seed
    one, calls = rollouts["preemptive"], rollouts["standard"]
    assert one.prompt_ids == calls.prompt_ids
    for key in ("tokens", "logprobs", "lengths", "finished", "rewards"):
        np.testing.assert_array_equal(getattr(one, key), getattr(calls, key))

    # The update from these rollouts: preemptive = every row sampled, then micro-batches packed by
    # length; standard as TRL runs it = each call's rows one micro-batch, accumulated as sampled.
    mesh = create_mesh(MeshConfig(fsdp=1), devices=jax.devices()[:1])
    tx = make_optimizer(preemptive_cfg.optimizer, 10)
    graphdef, state = create_train_state(load_pretrained(init_dir, dtype="float32"), tx, 0, mesh)
    rollout = dataclasses.replace(one, rewards=np.array([1, 0, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 0, 1], np.float32))
    rows = gt.build_rows(rollout.prompt_ids, rollout.tokens, rollout.lengths, tok_lib.pad_id(tokenizer))
    logp = np.asarray(jax.jit(gt.make_logp_fn(graphdef, 1.0))(state.params, state.rest, rows))
    rollout.logprobs = (logp * rows["completion_mask"]).astype(np.float32)  # the weights that sampled
    acc = jax.jit(gt.make_accumulate_fn(graphdef, preemptive_cfg.loss, 1.0, preemptive_cfg.rollout.max_new_tokens))
    zeros = jax.tree.map(jnp.zeros_like, state.params)

    _, keep, batches, weights = gt.update_batches(preemptive_cfg, rollout, tok_lib.pad_id(tokenizer))
    assert sorted(keep.tolist()) == list(range(16)) and len(batches) == 2
    assert keep.tolist() != list(range(16))  # packed in group-length order, not in the calls' order
    preemptive = zeros
    for b, w in zip(batches, weights):
        preemptive, _ = acc(preemptive, state.params, state.rest, b, jnp.float32(w))

    advantages, _, _, _ = gt.update_batches(standard_cfg, rollout, tok_lib.pad_id(tokenizer))
    rows.update(advantages=advantages.astype(np.float32), old_logp=rollout.logprobs, sampler_logp=rollout.logprobs)
    total_tokens = rows["completion_mask"].sum()
    standard = zeros
    for call in range(2):
        (b,) = gt.pack_micro_batches(rows, np.arange(8 * call, 8 * call + 8), 8)
        standard, _ = acc(standard, state.params, state.rest, b, jnp.float32(b["completion_mask"].sum() / total_tokens))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(standard)) > 1e-4  # a real update
    for a, b in zip(jax.tree.leaves(preemptive), jax.tree.leaves(standard)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-7)
    apply = jax.jit(gt.make_apply_fn(tx))
    after_preemptive, _ = apply(state, preemptive)
    after_standard, _ = apply(state, standard)
    for a, b in zip(jax.tree.leaves(after_preemptive.params), jax.tree.leaves(after_standard.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)  # Adam steps are ~lr = 1e-3


# Binary rewards with two mixed groups (kept) and two equal-reward groups (A = 0, dropped); with
# tau 0.6 the 1-of-4 group keeps only its winner (|A| = 1.5; the others have |A| = 0.5).
REWARDS = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1], np.float32)


def _row_key(prompt_ids, completion):
    return tuple(int(t) for t in prompt_ids), tuple(int(t) for t in completion)


def test_filtered_rows_reach_no_forward_or_backward_pass_and_accounting_adds_up(init_dir, tmp_path, monkeypatch):
    cfg = _cfg(init_dir, tmp_path, "rollout.generation_batch_size=8", "dash.filter=true", "dash.tau=0.6",
               "loss.beta=0.04", "loss.num_iterations=2", "steps=2", "checkpoint.every_steps=100")
    rollouts, placed, calls = [], [], []
    collect, place, generate = gt.collect_rollout, gt.place_rows, Sampler.generate

    def collect_with_rewards(*args, **kwargs):
        rollout, stats = collect(*args, **kwargs)
        rollout.rewards = REWARDS.copy()
        rollouts.append(rollout)
        return rollout, stats

    def place_and_record(rows, mesh, rules):  # every trainer pass (reference and update) reads these
        placed.append((len(rollouts), {k: np.array(v) for k, v in rows.items()}))
        return place(rows, mesh, rules)

    def generate_and_count(self, prompts, **kwargs):
        calls.append(len(rollouts))
        return generate(self, prompts, **kwargs)

    monkeypatch.setattr(gt.trainer, "collect_rollout", collect_with_rewards)
    monkeypatch.setattr(gt.trainer, "place_rows", place_and_record)
    monkeypatch.setattr(Sampler, "generate", generate_and_count)
    result = gt.train(cfg)

    kept_rows = [0, 8, 9, 10, 11]
    for step, rollout in enumerate(rollouts, 1):
        keys = [_row_key(rollout.prompt_ids[r], rollout.tokens[r, : rollout.lengths[r]]) for r in range(16)]
        kept = {keys[r] for r in kept_rows}
        seen = []
        for batch_step, b in placed:
            if batch_step != step:
                continue
            for r in range(len(b["tokens"])):
                real = b["completion_mask"][r] > 0
                if not real.any():  # a filler copy: no loss, no advantage
                    assert b["advantages"][r] == 0
                    continue
                prompt = b["prompt_tokens"][b["row_prompt"][r]][b["prompt_mask"][b["row_prompt"][r]]]
                seen.append(_row_key(prompt, b["tokens"][r][real]))
        assert sorted(seen) == sorted(kept)  # each kept row once, no dropped row at all
        assert not set(seen) & ({keys[r] for r in range(16)} - kept)
        assert calls.count(step - 1) == 2  # two 8-row sampler calls per step

    history = [h for h in result.history if "compute/tokens_generated" in h]
    assert len(history) == 2
    for h, rollout in zip(history, rollouts):
        kept_tokens = float(rollout.lengths[kept_rows].sum())
        assert h["compute/sampler_calls"] == 2 and h["compute/rows_generated"] == 16
        assert h["compute/tokens_generated"] == rollout.lengths.sum()
        assert h["compute/rows_filtered"] == 11 and h["dash/kept_frac"] == 5 / 16
        assert h["compute/tokens_filtered"] == rollout.lengths.sum() - kept_tokens
        assert h["compute/tokens_trained"] == 2 * kept_tokens and h["compute/rows_trained"] == 10
        assert h["compute/tokens_reference"] == kept_tokens
        assert h["compute/token_slots_trained"] >= h["compute/tokens_trained"]
    last = history[-1]
    for key in ("compute/tokens_generated", "compute/tokens_trained", "compute/tokens_filtered", "time/sampling",
                "time/reference", "time/update", "step_time"):
        assert last[f"{key}_total"] == pytest.approx(sum(h[key] for h in history)), key
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["compute/tokens_trained_total"] == pytest.approx(last["compute/tokens_trained_total"])


@pytest.mark.slow
def test_resumed_run_continues_the_totals(init_dir, tmp_path):
    cfg = _cfg(init_dir, tmp_path, "dash.filter=true", "steps=2")
    last = gt.train(cfg).history[-1]
    resumed = gt.train(dataclasses.replace(cfg, steps=3)).history[-1]  # from the step-2 checkpoint
    assert resumed["step"] == 3
    for key in ("compute/tokens_generated", "compute/rows_filtered", "time/update", "step_time"):
        assert resumed[f"{key}_total"] == pytest.approx(last[f"{key}_total"] + resumed[key]), key


# --- bad values stop at --dry-run and at trainer start ---------------------------------------
@pytest.mark.parametrize("overrides, words", [
    (["grpo.rollout.generation_batch_size=24"], "generation_batch_size must divide the step's 64 rows"),
    (["grpo.rollout.generation_batch_size=4"], "whole groups of 8"),
    (["grpo.dash.tau=-0.1"], "dash.tau must be >= 0"),
    (["grpo.rollout.num_generations=4", "grpo.rollout.generation_batch_size=4",
      "mesh={data: 8, fsdp: 1, tensor: 1}"], "generation_batch_size (4) is not a multiple of the 8-way"),
])
def test_bad_generation_batch_or_tau_fails_at_dry_run(tmp_path, capsys, overrides, words):
    args = argparse.Namespace(config=str(ROOT / "configs" / "quickstart.yaml"),
                              overrides=[f"run_dir={tmp_path / 'run'}", *overrides], dry_run=True)
    with pytest.raises(TailorError) as err:
        run_lib.run(args)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
    ok = argparse.Namespace(config=args.config, overrides=[f"run_dir={tmp_path / 'run'}", "grpo.rollout.generation_batch_size=32"],
                            dry_run=True)
    assert run_lib.run(ok) == 0 and "generation_batch_size: 32" in capsys.readouterr().out


def test_bad_generation_batch_is_one_line_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tailor_jax.cli", "run", "configs/quickstart.yaml", f"run_dir={tmp_path / 'r'}",
         "grpo.rollout.generation_batch_size=24", "--dry-run"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "grpo.rollout.generation_batch_size" in result.stderr or "rollout.generation_batch_size" in result.stderr
    assert "8, 16, 32, 64" in result.stderr


def test_trainer_checks_generation_batch_before_loading(init_dir, tmp_path):
    with pytest.raises(TailorError, match="use 0 .one call. or one of 4, 8, 16"):
        _cfg(init_dir, tmp_path, "rollout.generation_batch_size=12")
    cfg = _cfg(init_dir, tmp_path, "rollout.generation_batch_size=4")  # 4 rows on the 8 test devices
    with pytest.raises(TailorError, match="multiple of the 8-way data parallelism"):
        gt.train(cfg)
    assert not (tmp_path / "run").exists()
