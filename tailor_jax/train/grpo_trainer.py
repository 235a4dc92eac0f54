"""The GRPO loop, with DASH preemptive sampling + gradient filtering and DAPO dynamic sampling.

One step: choose prompts (a pure function of seed, step and curriculum) -> sample G completions
per prompt with the current weights (in calls of `rollout.generation_batch_size` rows: one call
per update micro-batch is standard GRPO, one call per step DASH's preemptive sampling) ->
rewards -> group advantages -> drop rows with |A| <= tau (DASH) BEFORE any trainer forward
pass -> pack survivors into micro-batches -> reference log-probs (beta > 0 only) ->
`num_iterations` optimizer updates, each accumulating gradients over the micro-batches. Weights change only after the whole rollout batch, so the
update is on-policy however small the micro-batches are. Every trainer forward computes each
prompt once for all the rows that continue it (`build_rows`, `Transformer.shared_prefix_forward`).

Micro-batch losses are weighted by their share of the FULL rollout batch's denominator (tokens
for token_mean, rows otherwise), so with filtering off the accumulated update equals plain GRPO
on the same rollouts, and with filtering on it differs only by the dropped rows' (small-|A|)
contributions.

Pure pieces (`build_rows`, `select_rows`, `pack_micro_batches`, `make_*_fn`) are testable with
arrays alone; `train` is the stateful shell (sampler, checkpoints, metrics, signals).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from tailor_jax.config import CheckpointConfig, OptimizerConfig, config_to_dict, dump_config, load_config, require
from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.data.jsonl import read_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.eval.accuracy import LEVEL_OPTION, answer_accuracy, level_records
from tailor_jax.model.logprobs import DEFAULT_CHUNK_TOKENS, TokenStats, model_token_logprobs
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.parallel.sharding import logical_sharding, use_sharding
from tailor_jax.sampling import Sampler
from tailor_jax.sampling.buckets import bucket
from tailor_jax.tasks import Task, get_task, problem_key
from tailor_jax.tasks.rewards import REWARD_FUNCTIONS
from tailor_jax.train.checkpoint import Checkpointer, TrainCheckpoint, install_preemption_handler
from tailor_jax.train.grpo import (
    KL_ESTIMATORS, LOSS_AGGREGATIONS, REWARD_SCALINGS, group_advantages, grpo_loss, logp_drift_metrics,
    truncated_importance_weights,
)
from tailor_jax.train.guard import NonFiniteGuard, describe_last_checkpoint, finite_flag, keep_if_finite
from tailor_jax.model.config import check_runtime_options
from tailor_jax.train.memory_plan import MemoryConfig, check_trainer
from tailor_jax.train.metrics import MetricsWriter, Progress, WandbConfig
from tailor_jax.train.optim import make_optimizer
from tailor_jax.train.state import TrainState, create_train_state, data_parallel_size, merge_model, state_shardings_of

Rows = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------
# Config.
@dataclasses.dataclass(frozen=True)
class CurriculumStage:
    start_step: int  # the stage applies from this step on (steps count from 1)
    task_options: dict[str, Any]  # merged over GRPOConfig.task_options, e.g. {steps: "6-15"}

    def __post_init__(self):
        require(self.start_step >= 1, f"curriculum start_step must be >= 1, got {self.start_step}")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 16  # prompts per rollout batch (DASH: the large preemptive batch)
    num_generations: int = 8  # G completions per prompt
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    # rows per sampler call; 0 = all the step's rows in one call (DASH preemptive sampling).
    # dash.micro_batch_size = standard GRPO as TRL runs it: one call per update micro-batch.
    generation_batch_size: int = 0

    def __post_init__(self):
        require(self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        require(self.num_generations >= 2, f"num_generations must be >= 2 (GRPO compares a group), got {self.num_generations}")
        rows, g = self.prompts_per_step * self.num_generations, self.num_generations
        valid = [n for n in range(g, rows + 1, g) if rows % n == 0]
        require(self.generation_batch_size == 0 or self.generation_batch_size in valid,
                f"rollout.generation_batch_size must divide the step's {rows} rows (prompts_per_step x num_generations) "
                f"in whole groups of {g}; got {self.generation_batch_size}, use 0 (one call) or one of "
                f"{', '.join(map(str, valid))}")
        require(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0, f"rollout temperature must be > 0, got {self.temperature}")
        require(self.top_k is None or self.top_k >= 1, f"top_k must be >= 1 or null, got {self.top_k}")
        require(self.top_p is None or 0 < self.top_p <= 1, f"top_p must be in (0, 1] or null, got {self.top_p}")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0  # KL weight; 0 loads and runs no reference model
    kl: Literal["k1", "k2", "k3"] = "k3"
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    policy_gradient: bool = False  # plain REINFORCE-style loss, no ratio
    num_iterations: int = 1  # mu: optimizer updates per rollout batch
    mask_truncated_completions: bool = False  # completions cut by max_new_tokens get no loss
    tis_cap: float | None = None  # truncated importance sampling cap (null: off)

    def __post_init__(self):
        require(self.epsilon_low >= 0 and self.epsilon_high >= 0, "epsilon_low and epsilon_high must be >= 0")
        require(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        require(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        require(self.tis_cap is None or self.tis_cap >= 1, f"tis_cap must be >= 1 or null, got {self.tis_cap}")
        assert self.kl in KL_ESTIMATORS and self.loss_agg in LOSS_AGGREGATIONS and self.scale_rewards in REWARD_SCALINGS


@dataclasses.dataclass(frozen=True)
class DashConfig:
    filter: bool = False  # gradient filtering: drop rows with |A| <= tau before the update
    tau: float = 0.1
    micro_batch_size: int = 0  # rows per micro-batch; 0 = the whole rollout batch at once

    def __post_init__(self):
        require(self.tau >= 0, f"dash.tau must be >= 0 (|A| <= tau is dropped; DASH uses 0.1), got {self.tau}")
        require(self.micro_batch_size >= 0, f"dash.micro_batch_size must be >= 0, got {self.micro_batch_size}")


@dataclasses.dataclass(frozen=True)
class DynamicSamplingConfig:
    enabled: bool = False  # DAPO: drop zero-variance groups and refill
    max_rounds: int = 3  # extra generation rounds per step at most

    def __post_init__(self):
        require(self.max_rounds >= 0, f"dynamic_sampling.max_rounds must be >= 0, got {self.max_rounds}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = 0  # 0: only before the first and after the last step
    levels: tuple[int, ...] = ()  # difficulty levels to report (empty: no evaluation)
    per_level: int = 50
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # over GRPOConfig.task_options
    max_new_tokens: int | None = None  # null: rollout.max_new_tokens
    exclude_file: str | None = None  # JSONL of problems to leave out (`tailor-jax run`: the SFT pool)

    def __post_init__(self):
        require(self.every >= 0 and self.per_level >= 1, "eval.every must be >= 0 and eval.per_level >= 1")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    run_dir: str
    init: str  # a Hugging Face-format model directory with its tokenizer (e.g. SFT_RUN/model)
    task: str = "gf"
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_file: str | None = None  # JSONL records to draw prompts from instead of generating them
    curriculum: tuple[CurriculumStage, ...] = ()
    rewards: dict[str, float] = dataclasses.field(default_factory=lambda: {"binary": 1.0})
    prompt_style: Literal["plain", "chat"] = "plain"
    think_prefill: bool = False
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    dash: DashConfig = dataclasses.field(default_factory=DashConfig)
    dynamic_sampling: DynamicSamplingConfig = dataclasses.field(default_factory=DynamicSamplingConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=lambda: OptimizerConfig(lr=1e-5, warmup_steps=0))
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig.auto)
    memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)
    # How the policy runs, never its shape: any of remat, attention, attention_query_chunk, mlp_chunk (model/config.py
    # RUNTIME_OPTIONS); empty: the model's defaults. Enters the stage hash only when set.
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    steps: int = 100
    log_every: int = 1
    progress: bool = True
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf gradient norm: stop, or skip that update (train/guard.py)
    max_consecutive_skips: int = 10  # nonfinite=skip: stop after this many skipped steps in a row
    wandb: WandbConfig | None = None  # log to Weights & Biases too (project, name, mode); see docs/training.md#metrics

    def __post_init__(self):
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        require(self.max_consecutive_skips >= 1, f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
        require(bool(self.rewards), "rewards must name at least one reward function, e.g. {binary: 1.0}")
        for name in self.rewards:
            require(name in REWARD_FUNCTIONS, f"unknown reward {name!r}; use {', '.join(REWARD_FUNCTIONS)}")
        starts = [stage.start_step for stage in self.curriculum]
        require(starts == sorted(set(starts)), f"curriculum start_steps must increase, got {starts}")
        require(self.task in LEVEL_OPTION, f"unknown task {self.task!r}; use one of {', '.join(LEVEL_OPTION)}")
        require(0 <= self.seed < 2**31, f"seed must be in [0, 2^31), got {self.seed}")
        check_runtime_options(self.model, "grpo.model")


# ---------------------------------------------------------------------------------------
# Pure pieces: prompts, rows, filtering, micro-batches.
def eval_problems(cfg: GRPOConfig) -> list[dict]:
    """The periodic evaluation's problems: `eval.per_level` per level, none in `eval.exclude_file`."""
    if not cfg.eval.levels:
        return []
    exclude = {problem_key(r) for r in read_jsonl(cfg.eval.exclude_file)} if cfg.eval.exclude_file else set()
    return level_records(cfg.task, {**cfg.task_options, **cfg.eval.task_options}, cfg.eval.levels,
                         cfg.eval.per_level, derive_seed(cfg.seed, 10**6), exclude)


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


PROMPT_KEYS = ("prompt_tokens", "prompt_positions", "prompt_mask")  # per distinct prompt; other keys are per row
TIME_KEYS = ("tokens", "positions", "completion_mask", "sampler_logp", "old_logp")  # per row, along the completion


def build_rows(
    prompt_ids: Sequence[Sequence[int]], completions: np.ndarray, lengths: np.ndarray, pad_id: int
) -> Rows:
    """Trainer rows in the shared-prompt layout: each distinct prompt once, each row its completion.

    Per distinct prompt u (left-padded to P): `prompt_tokens`, `prompt_positions`, `prompt_mask`
    [U, P]. Per row n: `row_prompt` [N] (its prompt u), the completion `tokens` [N, C] with
    `positions` continuing the prompt's, and `completion_mask` [N, C] (1 up to the row's length).
    The G rows of a group read one prompt, so the trainer computes it once (see
    `Transformer.shared_prefix_forward`).
    """
    n, c = completions.shape
    distinct: dict[tuple[int, ...], int] = {}
    row_prompt = np.array([distinct.setdefault(tuple(int(t) for t in ids), len(distinct)) for ids in prompt_ids], np.int32)
    p = bucket(max(len(ids) for ids in distinct), minimum=16)
    prompt_tokens = np.full((len(distinct), p), pad_id, np.int32)
    prompt_mask = np.zeros((len(distinct), p), bool)
    for u, ids in enumerate(distinct):
        prompt_tokens[u, p - len(ids) :] = ids
        prompt_mask[u, p - len(ids) :] = True
    prompt_positions = np.maximum(np.cumsum(prompt_mask, axis=1) - 1, 0).astype(np.int32)
    completion_mask = np.arange(c)[None, :] < np.asarray(lengths)[:, None]
    positions = (prompt_mask.sum(axis=1)[row_prompt][:, None] + np.arange(c)[None, :]).astype(np.int32)
    return {"prompt_tokens": prompt_tokens, "prompt_positions": prompt_positions, "prompt_mask": prompt_mask,
            "row_prompt": row_prompt, "tokens": np.asarray(completions, np.int32), "positions": positions,
            "completion_mask": completion_mask.astype(np.float32)}


def select_rows(advantages: np.ndarray, tau: float, enabled: bool) -> np.ndarray:
    """Indices of the rows to train on: |A| > tau when filtering (at least the largest |A|)."""
    if not enabled:
        return np.arange(len(advantages))
    keep = np.flatnonzero(np.abs(advantages) > tau)
    return keep if len(keep) else np.array([int(np.argmax(np.abs(advantages)))])


def order_by_group_length(index: np.ndarray, lengths: np.ndarray, group: int) -> np.ndarray:
    """`index` reordered so that groups with short completions come first, each group's rows
    together: micro-batches then hold completions of similar length, and each is only as wide
    as its longest (see `pack_micro_batches`)."""
    longest = lengths.reshape(-1, group).max(axis=1)
    return index[np.lexsort((index, index // group, longest[index // group]))]


def _take_prompts(rows: Rows, row_prompt: np.ndarray, slots: int) -> Rows:
    """The prompts `row_prompt` refers to, packed into `slots` slots (the rest all-padding), and
    `row_prompt` renumbered to them."""
    used = np.unique(row_prompt)
    if len(used) > slots:
        raise TailorError(f"a micro-batch reads {len(used)} prompts but has {slots} prompt slots")
    take = np.concatenate([used, np.full(slots - len(used), used[0])])
    out = {k: rows[k][take] for k in PROMPT_KEYS}
    out["prompt_mask"][len(used) :] = False
    out["row_prompt"] = np.searchsorted(used, row_prompt).astype(np.int32)
    return out


def pack_micro_batches(
    rows: Rows, index: np.ndarray, micro: int, prompt_slots: int | None = None, slot_multiple: int = 1,
    min_width: int = 16,
) -> list[Rows]:
    """Gather `index` rows into micro-batches of `micro` rows; the last one is padded with
    all-masked copies of a real row (zero weight, zero advantage). Each micro-batch carries the
    prompts its rows read in `prompt_slots` slots, the same count in every micro-batch so they
    share one compiled program. By default that is the most prompts any micro-batch reads,
    rounded up to a power of two (few distinct programs over a run) and a multiple of
    `slot_multiple` (the data parallelism), at most min(micro, number of prompts) so rounded.

    Each micro-batch is cut along the completion to its longest masked completion, rounded up to
    a power of two (at least `min_width`, at most the full width): past it every row is padding,
    and the update's cost grows with the width."""
    shared = "row_prompt" in rows
    if shared and prompt_slots is None:
        needed = max(len(np.unique(rows["row_prompt"][index[s : s + micro]])) for s in range(0, len(index), micro))
        cap = -(-min(micro, len(rows["prompt_tokens"])) // slot_multiple) * slot_multiple
        prompt_slots = min(bucket(needed, minimum=1, multiple=slot_multiple), cap)
    batches = []
    for start in range(0, len(index), micro):
        part = index[start : start + micro]
        fill = micro - len(part)
        take = np.concatenate([part, np.full(fill, part[0])])
        batch = {k: v[take] for k, v in rows.items() if k not in PROMPT_KEYS}
        if "completion_mask" in batch:
            full = batch["completion_mask"].shape[1]
            width = min(full, bucket(int((batch["completion_mask"][: len(part)] > 0).sum(axis=1).max()), minimum=min_width))
            batch.update({k: batch[k][:, :width] for k in TIME_KEYS if k in batch})
        if shared:
            batch.update(_take_prompts(rows, batch["row_prompt"], prompt_slots))
        if fill:
            batch["completion_mask"] = batch["completion_mask"].copy()
            batch["completion_mask"][len(part) :] = 0.0
            batch["advantages"] = batch["advantages"].copy()
            batch["advantages"][len(part) :] = 0.0
        batches.append(batch)
    return batches


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


def place_rows(rows: Rows, mesh, rules) -> dict[str, jax.Array]:
    """Put host rows (identical on every process) on the mesh, split along the batch axis
    (rows and prompts alike)."""
    return {
        k: jax.device_put(v, logical_sharding(("batch",) + (None,) * (v.ndim - 1), mesh, rules, v.shape))
        for k, v in rows.items()
    }


# ---------------------------------------------------------------------------------------
# Jitted pieces.
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
    """`acc(grads, params, rest, batch, weight) -> (grads + weight * dloss, metrics)` for one micro-batch."""

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


# ---------------------------------------------------------------------------------------
# The stateful shell.
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
    finished = np.concatenate([np.asarray(out.finished, bool) for out in outs])
    texts = [text for out in outs for text in tokenizer.batch_decode(out.tokens, skip_special_tokens=True)]
    components = {name: np.zeros(len(texts), np.float32) for name in cfg.rewards}
    for row, text in enumerate(texts):
        record, prompt = records[row // g], prompts[row // g]
        for name in cfg.rewards:
            components[name][row] = task.reward(name, record, prompt.prefill + text, finished=bool(finished[row]))
    rewards = sum(cfg.rewards[name] * components[name] for name in cfg.rewards)
    return Rollout(
        records=list(records), prompt_ids=[ids[row // g] for row in range(len(texts))],
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


def load_policy(cfg: GRPOConfig, mesh, rules):
    from tailor_jax.model.hf_io import load_pretrained

    init = Path(cfg.init)
    if not (init / "config.json").is_file():
        raise TailorError(f"init {init} has no config.json; point `init` at a Hugging Face-format model directory (e.g. SFT_RUN/model)")
    tokenizer = tok_lib.load_tokenizer(init)
    model = load_pretrained(init, mesh=mesh, rules=rules, options=cfg.model)
    return model, tokenizer


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(f"tailor-jax grpo: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class GRPOResult:
    metrics: dict[str, float]  # last training metrics merged with the last evaluation
    history: list[dict]  # every logged metrics dict (with "step")
    state: TrainState
    graphdef: Any
    tokenizer: Any


def train(cfg: GRPOConfig) -> GRPOResult:
    """Run (or resume) GRPO as configured."""
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TailorError(f"run_dir {run_dir} is a file; give a directory")
    pool = list(read_jsonl(cfg.train_file)) if cfg.train_file else None
    get_task(cfg.task, **task_options_at(cfg, cfg.steps))  # bad task options fail before any work
    mesh = create_mesh(cfg.mesh)
    rules = cfg.mesh.axis_rules()
    rows = cfg.rollout.prompts_per_step * cfg.rollout.num_generations
    micro = cfg.dash.micro_batch_size or rows
    shards = data_parallel_size(mesh, rules)
    if micro % shards:
        raise TailorError(f"dash.micro_batch_size ({micro}) must be a multiple of the {shards}-way data parallelism")
    if (Path(cfg.init) / "config.json").is_file():  # stops here, before the weights load, if a stage cannot fit
        from tailor_jax.model.hf_io import read_config

        check_trainer("grpo", cfg, read_config(cfg.init).replace(**cfg.model), _log)
    if cfg.rollout.generation_batch_size % shards:
        raise TailorError(f"rollout.generation_batch_size ({cfg.rollout.generation_batch_size}) must be a multiple of the "
                          f"{shards}-way data parallelism; use 0 (one call) or a multiple of {shards}")
    model, tokenizer = load_policy(cfg, mesh, rules)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        dump_config(cfg, run_dir / "config.yaml")

    tx = make_optimizer(cfg.optimizer, cfg.steps * cfg.loss.num_iterations)
    graphdef, state = create_train_state(model, tx, cfg.seed, mesh, rules)
    ref_params = jax.tree.map(jnp.copy, state.params) if cfg.loss.beta > 0 else None
    sampler = Sampler(model, mesh=mesh, rules=rules, pad_id=tok_lib.pad_id(tokenizer))
    del model
    temperature = cfg.rollout.temperature
    # The state and gradients keep their layout (one compiled program each, for the sampler too,
    # also after a resume); metrics are replicated scalars, readable on every process.
    shardings, replicated = state_shardings_of(state), NamedSharding(mesh, PartitionSpec())
    with use_sharding(mesh, rules):
        chunk = cfg.memory.logprob_chunk
        logp_fn = jax.jit(make_logp_fn(graphdef, temperature, chunk))
        accumulate = jax.jit(make_accumulate_fn(graphdef, cfg.loss, temperature, cfg.rollout.max_new_tokens, chunk),
                             donate_argnums=0, out_shardings=(shardings.params, replicated))
        apply = jax.jit(make_apply_fn(tx, skip_nonfinite=cfg.nonfinite == "skip"), donate_argnums=0, out_shardings=(shardings, replicated))

    eval_task = get_task(cfg.task, **{**cfg.task_options, **cfg.eval.task_options})
    eval_records = eval_problems(cfg)

    def evaluate(step: int) -> dict[str, float]:
        if not eval_records:
            return {}
        sampler.update_weights(merge_model(graphdef, state))
        return answer_accuracy(
            sampler, eval_task, tokenizer, eval_records, prompt_style=cfg.prompt_style,
            think_prefill=cfg.think_prefill, max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
        )

    checkpoint_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints"
    metrics_log = MetricsWriter(run_dir, is_primary=jax.process_index() == 0, wandb=cfg.wandb, config=config_to_dict(cfg))
    preemption = install_preemption_handler()
    guard = NonFiniteGuard("grpo", cfg.nonfinite, cfg.max_consecutive_skips)
    history: list[dict] = []
    last: dict[str, float] = {}
    try:
        with Checkpointer(checkpoint_dir, cfg.checkpoint) as checkpointer:
            restored = checkpointer.restore_latest(TrainCheckpoint(0, state.params, state.opt_state, rng_key=state.rng))
            if restored is not None:
                state = state.replace(
                    step=jax.device_put(jnp.asarray(restored.step, jnp.int32), state.step.sharding),
                    params=restored.params, opt_state=restored.opt_state, rng=restored.rng_key,
                )
            start = int(restored.step) if restored is not None else 0
            # cumulative compute accounting (`*_total`), carried in checkpoints so a resume continues it
            totals: dict[str, float] = dict((restored.data_state or {}).get("totals", {})) if restored is not None else {}
            if start == 0 and eval_records:
                last = evaluate(0)
                metrics_log.write(0, last)
                history.append({"step": 0, **last})
                _log("before RL: " + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("eval/acc")))
            bar = Progress(cfg.steps, initial_step=start, desc="grpo", enabled=cfg.progress and jax.process_index() == 0)
            for step in range(start + 1, cfg.steps + 1):
                t0 = time.perf_counter()
                sampler.update_weights(merge_model(graphdef, state))
                rollout, stats = collect_rollout(cfg, sampler, tokenizer, step, pool)
                t_sample = time.perf_counter()
                advantages, keep, micro_batches, weights = update_batches(cfg, rollout, tok_lib.pad_id(tokenizer), shards)
                device_batches = [place_rows(b, mesh, rules) for b in micro_batches]
                if ref_params is not None:
                    for b in device_batches:
                        b["ref_logp"] = logp_fn(ref_params, state.rest, b)
                t_ref = time.perf_counter()
                step_metrics: dict[str, float] = {}
                grad_norm, finite = 0.0, True
                for iteration in range(cfg.loss.num_iterations):
                    grads = jax.tree.map(jnp.zeros_like, state.params)
                    sums: dict[str, float] = {}
                    for b, w in zip(device_batches, weights):
                        grads, m = accumulate(grads, state.params, state.rest, b, jnp.float32(w))
                        tokens_b = float(m["num_tokens"])
                        for k, v in m.items():
                            if k == "sampler_trainer/logp_diff_max":
                                sums[k] = max(sums.get(k, 0.0), float(v))
                            elif k != "num_tokens":
                                sums[k] = sums.get(k, 0.0) + float(v) * tokens_b
                        sums["num_tokens"] = sums.get("num_tokens", 0.0) + tokens_b
                    state, norm = apply(state, grads)
                    grad_norm = float(norm)  # read every step anyway: the guard costs no extra sync here
                    finite = finite and math.isfinite(grad_norm)
                    if iteration == 0:
                        denom = max(sums["num_tokens"], 1.0)
                        step_metrics = {k: (v if k in ("num_tokens", "sampler_trainer/logp_diff_max") else v / denom)
                                        for k, v in sums.items()}
                t_end = time.perf_counter()
                guard.record(step, finite)
                guard.check(lambda: describe_last_checkpoint(checkpointer))
                n_rows = len(advantages)
                gen_tokens = stats["compute/tokens_generated"]
                kept_tokens = float(rollout.lengths[keep].sum())
                iterations = cfg.loss.num_iterations
                compute = {  # rows/tokens through each part of the step (see docs/grpo.md#compute-accounting)
                    "compute/rows_trained": float(len(keep) * iterations),
                    "compute/tokens_trained": kept_tokens * iterations,
                    "compute/token_slots_trained": float(sum(b["tokens"].size for b in micro_batches) * iterations),
                    "compute/tokens_reference": kept_tokens if ref_params is not None else 0.0,
                    "compute/rows_filtered": float(n_rows - len(keep)),
                    "compute/tokens_filtered": float(rollout.lengths.sum()) - kept_tokens,
                }
                metrics = {
                    "reward": float(rollout.rewards.mean()),
                    "reward_std": float(rollout.rewards.reshape(-1, cfg.rollout.num_generations).std(axis=1, ddof=1).mean()),
                    **{f"rewards/{k}/mean": float(v.mean()) for k, v in rollout.components.items()},
                    **stats,
                    "completions/mean_length": float(rollout.lengths.mean()),
                    "completions/clipped_ratio": float(1.0 - rollout.finished.mean()),
                    **step_metrics,
                    "grad_norm": grad_norm,
                    "dash/kept_frac": len(keep) / n_rows,
                    "dash/micro_batches": float(len(micro_batches)),
                    "sampler/tokens_per_s": gen_tokens / max(rollout.sampler_seconds, 1e-9),
                    "train/tokens_per_s": step_metrics.get("num_tokens", 0.0) * cfg.loss.num_iterations / max(t_end - t_ref, 1e-9),
                    "time/sampling": t_sample - t0,
                    "time/generate": rollout.sampler_seconds,
                    "time/reference": t_ref - t_sample,
                    "time/update": t_end - t_ref,
                    "step_time": t_end - t0,
                    **guard.metrics(),
                    **compute,
                }
                for key in [k for k in metrics if k.startswith(("compute/", "time/")) or k == "step_time"]:
                    totals[f"{key}_total"] = totals.get(f"{key}_total", 0.0) + metrics[key]
                metrics.update(totals)
                if (cfg.eval.every and step % cfg.eval.every == 0) or step == cfg.steps:
                    eval_metrics = evaluate(step)
                    metrics.update(eval_metrics)
                    if eval_metrics and jax.process_index() == 0:
                        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in eval_metrics.items() if k.startswith("eval/acc")))
                if step % cfg.log_every == 0 or step == cfg.steps or any(k.startswith("eval/") for k in metrics):
                    metrics_log.write(step, metrics)
                history.append({"step": step, **metrics})
                last = metrics
                bar.update(step, reward=metrics["reward"], kept=metrics["dash/kept_frac"])
                stop = preemption.reached(step)
                if checkpointer.should_save(step) or stop or step == cfg.steps:
                    data_state = {"step": step, "totals": dict(totals)}
                    checkpointer.save(TrainCheckpoint(step, state.params, state.opt_state, state.rng, data_state, config_to_dict(cfg)))
                if stop:
                    _log(f"stopped by {preemption.signal_name} after step {step}; checkpoint saved, rerun the same command to resume")
                    break
            bar.close()
    finally:
        preemption.uninstall()
        metrics_log.close()
    return GRPOResult(last, history, state, graphdef, tokenizer)


def register(subparsers) -> None:
    parser = subparsers.add_parser("grpo", help="GRPO reinforcement learning (with DASH and dynamic sampling)")
    parser.add_argument("config", help="YAML config (see docs/grpo.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=50")
    parser.set_defaults(func=run)


def run(args) -> int:
    cfg = load_config(GRPOConfig, args.config, args.overrides)
    result = train(cfg)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k in ("reward", "eval/acc"))
    _log(f"done: {summary}" if summary else "done")
    return 0
