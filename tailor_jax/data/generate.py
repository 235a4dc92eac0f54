"""`tailor-jax generate TASK`: write task records as JSON lines."""

from __future__ import annotations

import argparse
import itertools
import time

from tqdm import tqdm

from tailor_jax.data.jsonl import check_writable, write_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.tasks import TASK_MODULES, get_task, task_class


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate task problems as JSON lines")
    parser.add_argument("task", choices=sorted(TASK_MODULES), help="which task")
    parser.add_argument("--num", type=int, required=True, help="number of problems")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--out", required=True, help="output .jsonl file")
    for name in TASK_MODULES:  # each task's own flags (Task.cli_options)
        group = parser.add_argument_group(f"{name} options")
        for option in task_class(name).cli_options:
            group.add_argument(option.flag, dest=option.option, type=option.type, choices=option.choices, help=option.help)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def task_options(args: argparse.Namespace) -> dict:
    options = {}
    for task in TASK_MODULES:
        for option in task_class(task).cli_options:
            value = getattr(args, option.option)
            if value is None:
                continue
            if task != args.task:
                raise TailorError(f"{option.flag} is a {task} option and does not apply to {args.task}")
            options[option.option] = value
    return options


def run(args: argparse.Namespace) -> int:
    if args.num < 1:
        raise TailorError(f"--num must be at least 1, got {args.num}")
    out = check_writable(args.out)
    task = get_task(args.task, **task_options(args))
    start = time.perf_counter()
    records = itertools.islice(task.generate(args.num, args.seed), args.num)
    bar = tqdm(records, total=args.num, desc=f"generate {args.task}", unit="problem", disable=args.no_progress)
    count = write_jsonl(out, bar)
    if count != args.num:
        raise TailorError(f"the {args.task} generator produced {count} of {args.num} problems")
    seconds = time.perf_counter() - start
    print(f"wrote {count} {args.task} problems to {out} in {seconds:.1f}s ({count / max(seconds, 1e-9):.0f}/s)")
    return 0
