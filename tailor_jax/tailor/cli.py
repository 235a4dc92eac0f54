"""`tailor-jax tailor CONFIG.yaml [key=value ...]` and `tailor-jax primitives TASK`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tailor_jax.errors import TailorError


def register(subparsers) -> None:
    """Adds both commands (each only once: the CLI may already hold a placeholder for one)."""
    if "tailor" not in subparsers.choices:
        _register_tailor(subparsers)
    if "primitives" not in subparsers.choices:
        _register_primitives(subparsers)


def _register_tailor(subparsers) -> None:
    tailor = subparsers.add_parser("tailor", help="build a primitive-tailored SFT set (analyse, discover, synthesize, curate)")
    tailor.add_argument("config", help="YAML config (see docs/tailor.md)")
    tailor.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. budget=500")
    action = tailor.add_mutually_exclusive_group()
    action.add_argument("--stage", choices=("analyse", "discover", "synthesize", "curate"),
                        help="run only this stage, from the previous stage's artefacts")
    action.add_argument("--baselines", action="store_true",
                        help="build the baselines (baselines.names) with the same budget and compare the sets")
    action.add_argument("--metrics", metavar="SFT.jsonl", help="print the metrics of any SFT set (JSONL)")
    tailor.set_defaults(func=run_tailor)


def _register_primitives(subparsers) -> None:
    primitives = subparsers.add_parser("primitives", help="list a task's reasoning primitives with an example trace each")
    primitives.add_argument("task", help="kk, igsm or gf")
    primitives.add_argument("--seed", type=int, default=0, help="seed of the example problem")
    primitives.set_defaults(func=run_primitives)


def run_tailor(args) -> int:
    from tailor_jax.config import load_config
    from tailor_jax.tailor import pipeline

    cfg = load_config(pipeline.TailorConfig, args.config, args.overrides)
    if args.metrics:
        from tailor_jax.tailor import metrics as metrics_lib

        examples = metrics_lib.read_examples(args.metrics)
        scorer = metrics_lib.ModelScorer.from_directory(cfg.student) if cfg.student else None
        result = metrics_lib.compute_metrics(examples, pipeline.make_task(cfg), scorer=scorer, prompt_style=cfg.prompt_style)
        print(json.dumps(result, indent=2))
        return 0
    if args.baselines:
        pipeline.run_baselines(cfg)
        print((Path(cfg.run_dir) / "baselines" / "report.md").read_text())
        return 0
    if args.stage:
        pipeline.run_stage(cfg, args.stage)
        return 0
    pipeline.run_pipeline(cfg)
    return 0


def run_primitives(args) -> int:
    from tailor_jax.primitives import all_primitives
    from tailor_jax.tasks import get_task

    task = get_task(args.task)
    record = next(iter(task.generate(1, args.seed)))
    primitives = all_primitives(args.task)
    if not primitives:
        raise TailorError(f"the {args.task} library is empty")
    out = [f"{args.task} primitives (example problem: {task.question(record)})", ""]
    for primitive in primitives.values():
        trace = primitive.render(record)
        problems = primitive.check(record, trace)
        status = "checked" if not problems else f"CHECK FAILED: {problems[0]}"
        out.append(f"== {primitive.name} [{primitive.source}; tags: {', '.join(sorted(primitive.tags))}; {status}]")
        out.append(primitive.description)
        out.append(task.target(record, trace))
        out.append("")
    sys.stdout.write("\n".join(out))
    return 0
