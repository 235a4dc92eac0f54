"""The GRPO trainer (`tailor-jax grpo`): GRPO's part of the shared training shell (train/loop.py).

Per step (`_GRPOTrainer.step`): the sampler gets the current weights -> `collect_rollout`
(rollout.py) -> `grpo_update` (update.py) -> the step's metrics, with the compute accounting
summed over the run (carried in checkpoints, so a resume continues it). The shell around it
(checkpoints and exact resume, metrics files, progress, preemption, the non-finite guard, the
log / eval / save cadence) is the one SFT uses too. The periodic evaluation (`evaluate`)
greedy-decodes `eval.per_level` problems per level; a fresh run is evaluated before step 1 too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from tailor_jax.config import load_config
from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.data.jsonl import read_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.eval.accuracy import level_records
from tailor_jax.eval.evaluator import StrategyLabeller, evaluate_policy
from tailor_jax.parallel.mesh import create_mesh
from tailor_jax.parallel.sharding import use_sharding
from tailor_jax.sampling import Sampler
from tailor_jax.tasks import get_task, problem_key
from tailor_jax.train.grpo.config import GRPOConfig
from tailor_jax.train.grpo.rollout import Rollout, collect_rollout, derive_seed, task_options_at
from tailor_jax.train.grpo.rows import place_rows
from tailor_jax.train.grpo.update import (
    UpdateFns, UpdateResult, grpo_update, make_accumulate_fn, make_apply_fn, make_logp_fn,
)
from tailor_jax.train.loop import LoopConfig, StepOutput, check_run_dir, open_run_dir, print_metrics, run_loop, stage_log
from tailor_jax.train.memory_plan import check_trainer
from tailor_jax.train.optim import make_optimizer
from tailor_jax.train.state import TrainState, create_train_state, data_parallel_size, merge_model, state_shardings_of


def eval_problems(cfg: GRPOConfig) -> list[dict]:
    """The periodic evaluation's problems: `eval.per_level` per level, none in `eval.exclude_file`."""
    if not cfg.eval.levels:
        return []
    exclude = {problem_key(r) for r in read_jsonl(cfg.eval.exclude_file)} if cfg.eval.exclude_file else set()
    return level_records(cfg.task, {**cfg.task_options, **cfg.eval.task_options}, cfg.eval.levels,
                         cfg.eval.per_level, derive_seed(cfg.seed, 10**6), exclude)


def evaluate(cfg: GRPOConfig, sampler: Sampler, graphdef, state: TrainState, eval_task, tokenizer,
             eval_records: list[dict], strategy_of: StrategyLabeller | None = None) -> dict[str, float]:
    """The periodic evaluation: greedy answer accuracy of the current weights on `eval_records`
    (and, with `strategy_of`, the share of each strategy among the greedy completions)."""
    if not eval_records:
        return {}
    sampler.update_weights(merge_model(graphdef, state))
    return evaluate_policy(
        sampler, eval_task, tokenizer, eval_records, prompt_style=cfg.prompt_style,
        think_prefill=cfg.think_prefill, max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
        strategy_of=strategy_of,
    )


def load_policy(cfg: GRPOConfig, mesh, rules):
    from tailor_jax.model.hf_io import load_pretrained

    init = Path(cfg.init)
    if not (init / "config.json").is_file():
        raise TailorError(f"init {init} has no config.json; point `init` at a Hugging Face-format model directory (e.g. SFT_RUN/model)")
    tokenizer = tok_lib.load_tokenizer(init)
    model = load_pretrained(init, mesh=mesh, rules=rules, options=cfg.model)
    return model, tokenizer


def _log(message: str) -> None:
    stage_log("grpo", message)


@dataclasses.dataclass
class GRPOResult:
    metrics: dict[str, float]  # last training metrics merged with the last evaluation
    history: list[dict]  # every logged metrics dict (with "step")
    state: TrainState
    graphdef: Any
    tokenizer: Any


def train(cfg: GRPOConfig, *, strategy_labeller: Callable[[Any], StrategyLabeller | None] | None = None) -> GRPOResult:
    """Run (or resume) GRPO as configured. `strategy_labeller(eval_task)` gives the periodic
    evaluation a (record, completion) -> strategy labeller, whose shares it logs as
    `eval/strategy/<name>` (the run passes `primitives.classify.task_strategy_classifier`, a layer
    above the trainer)."""
    check_run_dir(cfg.run_dir)
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
    open_run_dir(cfg)

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
        fns = UpdateFns(
            accumulate=jax.jit(make_accumulate_fn(graphdef, cfg.loss, temperature, cfg.rollout.max_new_tokens, chunk),
                               donate_argnums=0, out_shardings=(shardings.params, replicated)),
            apply=jax.jit(make_apply_fn(tx, skip_nonfinite=cfg.nonfinite == "skip"), donate_argnums=0,
                          out_shardings=(shardings, replicated)),
            logp=jax.jit(make_logp_fn(graphdef, temperature, chunk)),
            place=lambda rows: place_rows(rows, mesh, rules),
        )
    trainer = _GRPOTrainer(cfg, sampler, tokenizer, graphdef, fns, shards, ref_params, pool, strategy_labeller)
    result = run_loop(LoopConfig.of("grpo", cfg, eval_every=cfg.eval.every, eval_at_start=True), trainer, state)
    return GRPOResult(result.metrics, result.history, result.state, graphdef, tokenizer)


def step_metrics(cfg: GRPOConfig, rollout: Rollout, stats: dict, update: UpdateResult, *, with_reference: bool,
                 sampling_seconds: float, step_seconds: float) -> dict[str, float]:
    """A step's metrics from its rollout and update (names: docs/grpo.md#metrics)."""
    keep, n_rows, iterations = update.keep, len(update.advantages), cfg.loss.num_iterations
    kept_tokens = float(rollout.lengths[keep].sum())
    compute = {  # rows/tokens through each part of the step (see docs/grpo.md#compute-accounting)
        "compute/rows_trained": float(len(keep) * iterations),
        "compute/tokens_trained": kept_tokens * iterations,
        "compute/token_slots_trained": float(sum(b["tokens"].size for b in update.micro_batches) * iterations),
        "compute/tokens_reference": kept_tokens if with_reference else 0.0,
        "compute/rows_filtered": float(n_rows - len(keep)),
        "compute/tokens_filtered": float(rollout.lengths.sum()) - kept_tokens,
    }
    return {
        "reward": float(rollout.rewards.mean()),
        "reward_std": float(rollout.rewards.reshape(-1, cfg.rollout.num_generations).std(axis=1, ddof=1).mean()),
        **{f"rewards/{k}/mean": float(v.mean()) for k, v in rollout.components.items()},
        **stats,
        "completions/mean_length": float(rollout.lengths.mean()),
        "completions/clipped_ratio": float(1.0 - rollout.finished.mean()),
        **update.metrics,
        "grad_norm": update.grad_norm,
        "dash/kept_frac": len(keep) / n_rows,
        "dash/micro_batches": float(len(update.micro_batches)),
        "sampler/tokens_per_s": stats["compute/tokens_generated"] / max(rollout.sampler_seconds, 1e-9),
        "train/tokens_per_s": update.metrics.get("num_tokens", 0.0) * iterations / max(update.update_seconds, 1e-9),
        "time/sampling": sampling_seconds,
        "time/generate": rollout.sampler_seconds,
        "time/reference": update.reference_seconds,
        "time/update": update.update_seconds,
        "step_time": step_seconds,
        **compute,
    }


class _GRPOTrainer:
    """GRPO's part of the shared loop (train/loop.py): a rollout and an update per step, the
    periodic evaluation, and the run's compute totals as the checkpoint's data position."""

    def __init__(self, cfg: GRPOConfig, sampler: Sampler, tokenizer, graphdef, fns: UpdateFns, shards: int,
                 ref_params, pool: list[dict] | None, strategy_labeller=None):
        self.cfg, self.sampler, self.tokenizer, self.graphdef, self.fns = cfg, sampler, tokenizer, graphdef, fns
        self.shards, self.ref_params, self.pool = shards, ref_params, pool
        self.eval_task = get_task(cfg.task, **{**cfg.task_options, **cfg.eval.task_options})
        self.strategy_of = strategy_labeller(self.eval_task) if strategy_labeller else None
        self.eval_records = eval_problems(cfg)
        self.totals: dict[str, float] = {}  # cumulative compute accounting (`*_total`)

    def restore_data(self, data_state: dict | None, step: int) -> None:
        self.totals = dict((data_state or {}).get("totals", {}))

    def step(self, state: TrainState, step: int) -> tuple[TrainState, StepOutput]:
        t0 = time.perf_counter()
        self.sampler.update_weights(merge_model(self.graphdef, state))
        rollout, stats = collect_rollout(self.cfg, self.sampler, self.tokenizer, step, self.pool)
        t_sample = time.perf_counter()
        state, update = grpo_update(state, rollout, self.cfg, tok_lib.pad_id(self.tokenizer), self.fns,
                                    shards=self.shards, ref_params=self.ref_params)
        metrics = step_metrics(self.cfg, rollout, stats, update, with_reference=self.ref_params is not None,
                               sampling_seconds=t_sample - t0, step_seconds=time.perf_counter() - t0)
        for key in [k for k in metrics if k.startswith(("compute/", "time/")) or k == "step_time"]:
            self.totals[f"{key}_total"] = self.totals.get(f"{key}_total", 0.0) + metrics[key]
        return state, StepOutput({**metrics, **self.totals}, update.finite)

    def read_metrics(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        return metrics

    def progress(self, metrics) -> dict[str, Any]:
        return {"reward": metrics["reward"], "kept": metrics["dash/kept_frac"]}

    def evaluate(self, state: TrainState, step: int) -> dict[str, float]:
        metrics = evaluate(self.cfg, self.sampler, self.graphdef, state, self.eval_task, self.tokenizer, self.eval_records,
                           self.strategy_of)
        if step == 0 and metrics:
            _log("before RL: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("eval/acc")))
        elif step:
            print_metrics(step, metrics, digits=3, prefix="eval/acc")
        return metrics

    def data_state(self, step: int) -> dict:
        return {"step": step, "totals": dict(self.totals)}

    def close(self) -> None:
        pass


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
