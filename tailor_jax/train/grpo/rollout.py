"""Rollouts: each step's prompts (pure in seed, step and round), sampling G completions per
prompt with the current weights, rewards, and DAPO dynamic sampling (refilling zero-variance
groups from extra rounds)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from itertools import islice

import numpy as np

from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.eval.evaluator import Completions, decode_completions, score_completions
from tailor_jax.sampling import Sampler
from tailor_jax.tasks import get_task
from tailor_jax.train.grpo.config import GRPOConfig, RolloutConfig


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (e.g. run seed, step, round): no correlation between steps."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def task_options_at(cfg: GRPOConfig, step: int) -> dict:
    """The task options in force at `step` (the last curriculum stage started by then)."""
    options = dict(cfg.task_options)
    for stage in cfg.curriculum:
        if stage.start_step <= step:
            options.update(stage.task_options)
    return options


def step_records(cfg: GRPOConfig, step: int, round_: int, pool: Sequence[dict] | None) -> list[dict]:
    """The prompts of one generation round: fresh problems (or draws from `pool`), pure in
    (seed, step, round) so a resumed run sees exactly the same prompts."""
    n = cfg.rollout.prompts_per_step
    seed = derive_seed(cfg.seed, step, round_)
    if pool is not None:
        picks = np.random.default_rng(seed).choice(len(pool), size=n, replace=len(pool) < n)
        return [pool[int(i)] for i in picks]
    task = get_task(cfg.task, **task_options_at(cfg, step))
    return list(islice(task.generate(n, seed), n))


@dataclasses.dataclass
class Rollout:
    records: list[dict]  # one per prompt
    prompt_ids: list[list[int]]  # one per row (the prompt repeated G times)
    tokens: np.ndarray  # [N, C]
    logprobs: np.ndarray  # [N, C] sampler log-probs
    lengths: np.ndarray  # [N]
    finished: np.ndarray  # [N] bool
    rewards: np.ndarray  # [N] weighted sum
    components: dict[str, np.ndarray]  # reward fn -> [N]
    sampler_seconds: float
    rounds: int = 1
    sampler_calls: int = 1


def sample_round(cfg: GRPOConfig, sampler: Sampler, tokenizer, records: list[dict], step: int, round_: int) -> Rollout:
    task = get_task(cfg.task, **task_options_at(cfg, step))
    g = cfg.rollout.num_generations
    prompts = [task.prompt(r, style=cfg.prompt_style, think_prefill=cfg.think_prefill) for r in records]
    ids = [tok_lib.encode_prompt(tokenizer, p) for p in prompts]
    # `rollout.generation_batch_size` rows (whole groups) per sampler call; each call's seed is
    # pure in (seed, step, round, call), and one call keeps the seed it always had.
    calls = sampler_calls_per_round(cfg.rollout)
    per_call = -(-len(ids) // calls)
    outs = [
        sampler.generate(
            ids[start : start + per_call], max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
            top_k=cfg.rollout.top_k, top_p=cfg.rollout.top_p, num_samples=g, eos_token_ids=[tokenizer.eos_token_id],
            seed=derive_seed(cfg.seed, step, round_, 1, *([call] if calls > 1 else [])),
        )
        for call, start in enumerate(range(0, len(ids), per_call))
    ]
    done = Completions.concat([decode_completions(tokenizer, prompts[start : start + per_call], out, g)
                               for out, start in zip(outs, range(0, len(ids), per_call))])
    finished = np.asarray(done.finished, bool)
    components = {name: score_completions(task, records, done, name).reshape(-1) for name in cfg.rewards}
    rewards = sum(cfg.rewards[name] * components[name] for name in cfg.rewards)
    return Rollout(
        records=list(records), prompt_ids=[ids[row // g] for row in range(len(finished))],
        tokens=np.concatenate([out.token_array for out in outs]), logprobs=np.concatenate([out.logprob_array for out in outs]),
        lengths=np.concatenate([np.asarray(out.lengths) for out in outs]), finished=finished,
        rewards=np.asarray(rewards, np.float32), components=components,
        sampler_seconds=sum(out.seconds for out in outs), sampler_calls=len(outs),
    )


def sampler_calls_per_round(rollout: RolloutConfig) -> int:
    """Sampler calls per generation round: 1 (preemptive) or rows / `generation_batch_size`."""
    rows = rollout.prompts_per_step * rollout.num_generations
    return rows // (rollout.generation_batch_size or rows)


def _take_groups(rollout: Rollout, groups: np.ndarray, g: int) -> Rollout:
    rows = (groups[:, None] * g + np.arange(g)[None, :]).reshape(-1)
    return dataclasses.replace(
        rollout, records=[rollout.records[i] for i in groups], prompt_ids=[rollout.prompt_ids[r] for r in rows],
        tokens=rollout.tokens[rows], logprobs=rollout.logprobs[rows], lengths=rollout.lengths[rows],
        finished=rollout.finished[rows], rewards=rollout.rewards[rows],
        components={k: v[rows] for k, v in rollout.components.items()},
    )


def _concat(a: Rollout, b: Rollout) -> Rollout:
    width = max(a.tokens.shape[1], b.tokens.shape[1])
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))  # noqa: E731
    return Rollout(
        records=a.records + b.records, prompt_ids=a.prompt_ids + b.prompt_ids,
        tokens=np.concatenate([pad(a.tokens), pad(b.tokens)]), logprobs=np.concatenate([pad(a.logprobs), pad(b.logprobs)]),
        lengths=np.concatenate([a.lengths, b.lengths]), finished=np.concatenate([a.finished, b.finished]),
        rewards=np.concatenate([a.rewards, b.rewards]),
        components={k: np.concatenate([a.components[k], b.components[k]]) for k in a.components},
        sampler_seconds=a.sampler_seconds + b.sampler_seconds, rounds=a.rounds + b.rounds,
    )


def collect_rollout(cfg: GRPOConfig, sampler: Sampler, tokenizer, step: int, pool) -> tuple[Rollout, dict]:
    """One rollout batch; with dynamic sampling, zero-variance groups are replaced by groups from
    extra rounds (at most `max_rounds`), and any shortfall is filled with zero-variance groups."""
    g, n = cfg.rollout.num_generations, cfg.rollout.prompts_per_step
    first = sample_round(cfg, sampler, tokenizer, step_records(cfg, step, 0, pool), step, 0)
    sampled = [first]  # every round, for the compute accounting (discarded groups cost too)
    zero_std = first.rewards.reshape(-1, g).std(axis=1) == 0
    stats = {"frac_reward_zero_std": float(zero_std.mean())}

    def account(rollout: Rollout) -> tuple[Rollout, dict]:
        rollout.sampler_seconds = sum(r.sampler_seconds for r in sampled)
        return rollout, {**stats, "compute/sampler_calls": float(sum(r.sampler_calls for r in sampled)),
                         "compute/rows_generated": float(sum(len(r.lengths) for r in sampled)),
                         "compute/tokens_generated": float(sum(int(r.lengths.sum()) for r in sampled))}

    if not cfg.dynamic_sampling.enabled:
        return account(first)
    kept = _take_groups(first, np.flatnonzero(~zero_std), g)
    spare = _take_groups(first, np.flatnonzero(zero_std), g)
    round_ = 0
    while len(kept.records) < n and round_ < cfg.dynamic_sampling.max_rounds:
        round_ += 1
        extra = sample_round(cfg, sampler, tokenizer, step_records(cfg, step, round_, pool), step, round_)
        sampled.append(extra)
        extra_zero = extra.rewards.reshape(-1, g).std(axis=1) == 0
        kept = _concat(kept, _take_groups(extra, np.flatnonzero(~extra_zero), g))
    kept = _take_groups(kept, np.arange(min(n, len(kept.records))), g) if len(kept.records) > n else kept
    short = n - len(kept.records)
    if short:
        kept = _concat(kept, _take_groups(spare, np.arange(short), g))
    kept.rounds = round_ + 1
    stats["dynamic_sampling/rounds"] = float(round_ + 1)
    stats["dynamic_sampling/filled_zero_std_groups"] = float(short)
    return account(kept)

