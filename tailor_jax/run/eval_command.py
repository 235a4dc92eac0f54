"""`tailor-jax eval CONFIG.yaml --checkpoint DIR [key=value ...]`: a model on held-out problems.

DIR is a Hugging Face-format model directory with its tokenizer (a run's `sft/model` or
`grpo/model`, or a run's stage directory holding `model/`). The problems come from the run
config's `eval` section (the same held-out set `tailor-jax run` uses when the run directory
has one, else freshly generated from `eval.levels`, `eval.per_level`, `eval.seed`). The scoring
is the evaluator's (`tailor_jax.eval.evaluate.evaluate_model`); this module only reads the run
config, which is why it lives with the run and not in `tailor_jax.eval`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tailor_jax.eval import evaluate
from tailor_jax.run.config import load_run_config, mesh_dict, stage_dir
from tailor_jax.run.stages import eval_records


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model on held-out problems per difficulty level")
    parser.add_argument("config", help="YAML run config (its task, task_options and eval section are used)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.per_level=100")
    parser.add_argument("--checkpoint", required=True, help="model directory (e.g. RUN_DIR/grpo/model)")
    parser.add_argument("--out", help="also write the result as JSON to this file")
    parser.set_defaults(func=run)


def run(args) -> int:
    from tailor_jax.primitives.classify import task_strategy_classifier
    from tailor_jax.tasks import get_task

    cfg = load_run_config(args.config, args.overrides)
    if (stage_dir(cfg, "data") / "train.jsonl").is_file():
        # the run's held-out problems (none in its SFT pool); the same as its eval stage's when the
        # eval section is unchanged, and the overridden levels / counts otherwise
        records = eval_records(cfg)
    else:
        from tailor_jax.eval.accuracy import level_records

        records = level_records(cfg.task, {**cfg.task_options, **cfg.eval.task_options}, cfg.eval.levels,
                                cfg.eval.per_level, cfg.eval.seed)
    task = get_task(cfg.task, **{**cfg.task_options, **cfg.eval.task_options})
    result = evaluate.evaluate_model(
        args.checkpoint, task, records, prompt_style=cfg.prompt_style, think_prefill=cfg.think_prefill,
        max_new_tokens=cfg.eval.max_new_tokens, pass_k=cfg.eval.pass_k, temperature=cfg.eval.temperature,
        seed=cfg.eval.seed, mesh=mesh_dict(cfg), strategy_of=task_strategy_classifier(task),
    )
    print(evaluate.describe(result, cfg.task, name=Path(args.checkpoint).name))
    if args.out:
        evaluate.write_result(result, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
