"""The stages of a run, each `run_<stage>(cfg, out_dir) -> one-line summary`; artefacts go into
the stage's directory. The driver (`tailor_jax.run.execute`) decides which of them run."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tailor_jax.atomic import replace_dir, write_json
from tailor_jax.errors import TailorError
from tailor_jax.run.config import RunConfig, grpo_config, mesh_dict, model_dir, sft_config, stage_dir, teacher_config, trained_models
from tailor_jax.tasks import problem_key


def export_model(model, tokenizer, directory: Path) -> None:
    from tailor_jax.data import tokenizer as tok_lib
    from tailor_jax.model import save_pretrained

    def write(tmp: Path) -> None:
        save_pretrained(model, tmp)
        tok_lib.save_tokenizer(tokenizer, tmp)

    replace_dir(directory, write)


class Interrupted(Exception):
    """A trainer stopped early on SIGINT/SIGTERM after saving a checkpoint."""


# ---------------------------------------------------------------------------------------
# data, warm start
def run_data(cfg: RunConfig, out: Path) -> str:
    from itertools import islice

    from tailor_jax.data.jsonl import write_jsonl
    from tailor_jax.tasks import get_task

    task = get_task(cfg.task, **{**cfg.task_options, **cfg.data.train_options})
    train = list(islice(task.generate(cfg.data.num_train, cfg.data.seed), cfg.data.num_train))
    seen = {problem_key(r) for r in train}
    want = cfg.data.num_sft_eval
    held_out = [r for r in islice(task.generate(3 * want + 10, cfg.data.seed + 1), 3 * want + 10) if problem_key(r) not in seen]
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "sft_eval.jsonl", held_out[:want])
    return f"{len(train)} training problems, {min(want, len(held_out))} held out"


def warm_start_records(cfg: RunConfig, records: list[dict]) -> list[dict]:
    """SFT demonstrations (records with `completion` and `primitive`) for the training problems."""
    from tailor_jax.tasks import get_task

    method = cfg.warm_start.method
    if method == "redistill":
        return _redistill_records(cfg, records)
    if method == "task_trace":
        options = dict(cfg.task_options)
        if cfg.warm_start.strategy is not None:
            if cfg.task != "gf":
                raise TailorError(f"warm_start.strategy applies to the gf task only; remove it for {cfg.task}")
            options["strategy"] = cfg.warm_start.strategy
        task = get_task(cfg.task, **options)
        name_of = _trace_namer(cfg.task, cfg.warm_start.strategy)
        return [{**r, "completion": task.target(r), "primitive": name_of(r)} for r in records]
    return _primitive_warm_start(cfg, records)


def _trace_namer(task: str, strategy: str | None) -> Callable[[dict], str]:
    if task == "gf" and strategy == "mixed":
        from tailor_jax.tasks.gf import mixed_strategy

        return mixed_strategy
    name = strategy or "canonical"
    return lambda record: name


def _redistill_records(cfg: RunConfig, records: list[dict]) -> list[dict]:
    """The teacher's (RL-trained rule_based policy's) verified-correct samples on the SFT prompts,
    up to one demonstration per prompt: the base model is then SFT-ed on about as many as the
    other warm starts give (fewer where the teacher fails)."""
    from tailor_jax.tailor import baselines
    from tailor_jax.tailor.metrics import example_to_json
    from tailor_jax.tasks import get_task

    options = {"samples_per_question": 1, "max_new_tokens": cfg.eval.max_new_tokens, **cfg.warm_start.options}
    teacher = model_dir(teacher_config(cfg), "grpo")
    shown = 0

    def progress(done: int, total: int, solved: int) -> None:  # a line per tenth of the prompts
        nonlocal shown
        if done - shown >= total / 10 or done == total:
            shown = done
            print(f"tailor-jax run: warm_start: redistill sampled {done:,} of {total:,} SFT prompts, the teacher solved "
                  f"{solved:,} ({solved / done:.1%})", file=sys.stderr, flush=True)

    examples = baselines.redistill(get_task(cfg.task, **cfg.task_options), records, len(records), teacher,
                                   prompt_style=cfg.prompt_style, on_progress=progress, **options)
    if not examples:
        raise TailorError(f"redistill: the teacher ({teacher}) solved none of the {len(records)} SFT prompts; train it longer "
                          "(sft.steps, grpo.steps) or sample more (warm_start.options.samples_per_question)")
    return [example_to_json(example) for example in examples]


def _primitive_warm_start(cfg: RunConfig, records: list[dict]) -> list[dict]:
    """The Tailor pipeline (or a baseline); its artefacts go to `warm_start/tailor/`."""
    from tailor_jax.tailor import pipeline as tailor_pipeline

    return tailor_pipeline.warm_start(
        cfg.task, records, method=cfg.warm_start.method, task_options=dict(cfg.task_options),
        run_dir=str(stage_dir(cfg, "warm_start") / "tailor"), prompt_style=cfg.prompt_style, **cfg.warm_start.options,
    )


def diversity_stats(demos: Sequence[dict]) -> dict[str, Any]:
    """Counts per primitive, distinct-1/2/3 over whitespace tokens of the completions, mean length."""
    from tailor_jax.tailor.metrics import distinct_n

    counts: dict[str, int] = {}
    for demo in demos:
        name = str(demo.get("primitive", "unknown"))
        counts[name] = counts.get(name, 0) + 1
    completions = [demo["completion"] for demo in demos]
    lengths = [len(text.split()) for text in completions]
    stats: dict[str, Any] = {"num_demos": len(demos), "primitives": dict(sorted(counts.items())),
                             "num_primitives": len(counts)}
    for n in (1, 2, 3):
        stats[f"distinct_{n}"] = distinct_n(completions, n)
    stats["mean_words"] = sum(lengths) / len(lengths) if lengths else 0.0
    return stats


def run_warm_start(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.data.jsonl import read_jsonl, write_jsonl

    records = list(read_jsonl(stage_dir(cfg, "data") / "train.jsonl"))
    demos = warm_start_records(cfg, records)
    if not demos:
        raise TailorError("the warm start produced no demonstrations; check warm_start and data settings")
    stats = diversity_stats(demos)
    write_jsonl(out / "sft.jsonl", demos)
    write_json(out / "stats.json", stats)
    mix = ", ".join(f"{k} {v}" for k, v in stats["primitives"].items())
    return f"{len(demos)} demonstrations ({cfg.warm_start.method}: {mix}); distinct-2 {stats['distinct_2']:.3f}"


# ---------------------------------------------------------------------------------------
# SFT, GRPO
def run_sft(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.train import sft as sft_lib
    from tailor_jax.train.state import merge_model

    sft_cfg = sft_config(cfg)
    budgets = {"sft.max_new_tokens": sft_cfg.max_new_tokens} if sft_cfg.eval_samples else {}
    if cfg.grpo is not None:
        budgets["grpo.rollout.max_new_tokens"] = grpo_config(cfg).rollout.max_new_tokens
    budgets["eval.max_new_tokens"] = cfg.eval.max_new_tokens
    result = sft_lib.train(sft_cfg, generation_budgets=budgets)
    if int(result.state.step) < sft_cfg.steps:
        raise Interrupted(f"SFT stopped at step {int(result.state.step)} of {sft_cfg.steps}")
    export_model(merge_model(result.graphdef, result.state), result.tokenizer, model_dir(cfg, "sft"))
    return _metric_summary(result.metrics, ("loss", "eval/loss", "eval/acc"), f"{sft_cfg.steps} steps")


def run_grpo(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.train import grpo as grpo_lib
    from tailor_jax.train.state import merge_model

    from tailor_jax.primitives.classify import task_strategy_classifier

    grpo_cfg = grpo_config(cfg)
    result = grpo_lib.train(grpo_cfg, strategy_labeller=task_strategy_classifier)
    if result.history and result.history[-1]["step"] < grpo_cfg.steps:
        raise Interrupted(f"GRPO stopped at step {result.history[-1]['step']} of {grpo_cfg.steps}")
    export_model(merge_model(result.graphdef, result.state), result.tokenizer, model_dir(cfg, "grpo"))
    return _metric_summary(result.metrics, ("reward", "eval/acc"), f"{grpo_cfg.steps} steps")


# ---------------------------------------------------------------------------------------
# eval, report
def eval_records(cfg: RunConfig) -> list[dict]:
    """The held-out evaluation problems: per level, none of them in the SFT problem pool."""
    from tailor_jax.eval.accuracy import level_records

    options = {**cfg.task_options, **cfg.eval.task_options}
    return level_records(cfg.task, options, cfg.eval.levels, cfg.eval.per_level, cfg.eval.seed, train_keys(cfg))


def train_keys(cfg: RunConfig) -> set[str]:
    from tailor_jax.data.jsonl import read_jsonl

    return {problem_key(r) for r in read_jsonl(stage_dir(cfg, "data") / "train.jsonl")}


def run_eval(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.data.jsonl import read_jsonl, write_jsonl
    from tailor_jax.eval import evaluate as eval_lib
    from tailor_jax.primitives.classify import task_strategy_classifier
    from tailor_jax.tasks import get_task

    records_path = out / "records.jsonl"
    if not records_path.is_file():
        write_jsonl(records_path, eval_records(cfg))
    records = list(read_jsonl(records_path))
    task = get_task(cfg.task, **{**cfg.task_options, **cfg.eval.task_options})
    parts = []
    for name in trained_models(cfg):
        result_path = out / f"{name}.json"
        if not result_path.is_file():  # each model's result is kept as soon as it exists
            result = eval_lib.evaluate_model(
                model_dir(cfg, name), task, records, prompt_style=cfg.prompt_style, think_prefill=cfg.think_prefill,
                max_new_tokens=cfg.eval.max_new_tokens, pass_k=cfg.eval.pass_k, temperature=cfg.eval.temperature,
                seed=cfg.eval.seed, mesh=mesh_dict(cfg), strategy_of=task_strategy_classifier(task),
            )
            eval_lib.write_result(result, result_path)
        result = json.loads(result_path.read_text())
        cut = f" ({100 * result['truncated']:.0f}% cut at {cfg.eval.max_new_tokens} tokens)" if result.get("truncated") else ""
        parts.append(f"{name} acc {result['acc']:.3f}{cut}")
    return f"{len(records)} held-out problems (levels {', '.join(map(str, cfg.eval.levels))}): " + ", ".join(parts)


def run_report(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.eval import report as report_lib

    path = report_lib.write_report(Path(cfg.run_dir))
    return f"{path} and {len(list((Path(cfg.run_dir) / 'plots').glob('*.png')))} plots"


def _metric_summary(metrics: dict, keys: Sequence[str], head: str) -> str:
    shown = [f"{k} {metrics[k]:.3f}" for k in keys if k in metrics]
    return ", ".join([head, *shown])
