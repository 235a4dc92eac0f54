"""The GRPO config (`tailor-jax grpo CONFIG`, the `grpo:` section of a run config); see docs/grpo.md."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from tailor_jax.config import CheckpointConfig, OptimizerConfig, require
from tailor_jax.tasks import task_names
from tailor_jax.parallel.mesh import MeshConfig
from tailor_jax.tasks.rewards import REWARD_FUNCTIONS
from tailor_jax.train.grpo.loss import KL_ESTIMATORS, LOSS_AGGREGATIONS, REWARD_SCALINGS
from tailor_jax.model.config import check_runtime_options
from tailor_jax.train.memory_config import MemoryConfig
from tailor_jax.train.metrics import WandbConfig


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
        require(self.task in task_names(), f"unknown task {self.task!r}; use one of {', '.join(task_names())}")
        require(0 <= self.seed < 2**31, f"seed must be in [0, 2^31), got {self.seed}")
        check_runtime_options(self.model, "grpo.model")

