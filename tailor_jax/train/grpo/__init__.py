"""GRPO with DASH preemptive sampling + gradient filtering and DAPO dynamic sampling.

One step: choose prompts (a pure function of seed, step and curriculum) -> sample G completions
per prompt with the current weights (in calls of `rollout.generation_batch_size` rows: one call
per update micro-batch is standard GRPO, one call per step DASH's preemptive sampling) ->
rewards -> group advantages -> drop rows with |A| <= tau (DASH) BEFORE any trainer forward
pass -> pack survivors into micro-batches -> reference log-probs (beta > 0 only) ->
`num_iterations` optimizer updates, each accumulating gradients over the micro-batches. Weights
change only after the whole rollout batch, so the update is on-policy however small the
micro-batches are. Every trainer forward computes each prompt once for all the rows that
continue it (`build_rows`, `Transformer.shared_prefix_forward`).

Micro-batch losses are weighted by their share of the FULL rollout batch's denominator (tokens
for token_mean, rows otherwise), so with filtering off the accumulated update equals plain GRPO
on the same rollouts, and with filtering on it differs only by the dropped rows' (small-|A|)
contributions.

Modules:
  config   the config dataclasses (`GRPOConfig` and its sections)
  loss     the objective as pure jnp functions (advantages, the clipped loss, KL, TIS)
  rollout  prompts per step, sampling and rewards, dynamic sampling (`collect_rollout`)
  rows     trainer rows, the DASH filter, micro-batch packing (numpy, pure)
  update   the jitted pieces and `grpo_update`, the step body from a rollout to new weights
  trainer  `train` and the `tailor-jax grpo` command: GRPO's part of the shared shell (train/loop.py)
"""

from tailor_jax.train.grpo.config import (
    CurriculumStage, DashConfig, DynamicSamplingConfig, EvalConfig, GRPOConfig, LossConfig, RolloutConfig,
)
from tailor_jax.train.grpo.loss import (
    KL_ESTIMATORS, LOSS_AGGREGATIONS, REWARD_SCALINGS, group_advantages, grpo_loss, kl_estimate,
    logp_drift_metrics, truncated_importance_weights,
)
from tailor_jax.train.grpo.rollout import (
    Rollout, collect_rollout, derive_seed, sample_round, sampler_calls_per_round, step_records, task_options_at,
)
from tailor_jax.train.grpo.rows import (
    PROMPT_KEYS, TIME_KEYS, Rows, build_rows, order_by_group_length, pack_micro_batches, place_rows, select_rows,
)
from tailor_jax.train.grpo.update import (
    UpdateFns, UpdateResult, completion_stats, grpo_update, make_accumulate_fn, make_apply_fn, make_logp_fn,
    update_batches,
)
from tailor_jax.train.grpo.trainer import GRPOResult, eval_problems, evaluate, load_policy, register, run, train

__all__ = [
    "CurriculumStage", "DashConfig", "DynamicSamplingConfig", "EvalConfig", "GRPOConfig", "LossConfig", "RolloutConfig",
    "KL_ESTIMATORS", "LOSS_AGGREGATIONS", "REWARD_SCALINGS", "group_advantages", "grpo_loss", "kl_estimate",
    "logp_drift_metrics", "truncated_importance_weights",
    "Rollout", "collect_rollout", "derive_seed", "sample_round", "sampler_calls_per_round", "step_records",
    "task_options_at",
    "PROMPT_KEYS", "TIME_KEYS", "Rows", "build_rows", "order_by_group_length", "pack_micro_batches", "place_rows",
    "select_rows",
    "UpdateFns", "UpdateResult", "completion_stats", "grpo_update", "make_accumulate_fn", "make_apply_fn",
    "make_logp_fn", "update_batches",
    "GRPOResult", "eval_problems", "evaluate", "load_policy", "register", "run", "train",
]
