"""`tailor-jax generate TASK`: write task records as JSON lines."""

from __future__ import annotations

import argparse
import itertools
import time

from tqdm import tqdm

from tailor_jax.data.jsonl import check_writable, write_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.tasks import TASK_MODULES, get_task

# CLI flag -> (task, task option name). Difficulty flags take an int or a range "lo-hi".
TASK_FLAGS = {
    "kk": {"people": "people", "depth": "depth", "width": "width"},
    "igsm": {"op": "op", "preset": "preset", "split": "split"},
    "gf": {"p": "p", "kind": "kind", "steps": "steps", "tag_pool": "tag_pool"},
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate task problems as JSON lines")
    parser.add_argument("task", choices=sorted(TASK_MODULES), help="which task")
    parser.add_argument("--num", type=int, required=True, help="number of problems")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--out", required=True, help="output .jsonl file")
    kk = parser.add_argument_group("kk options")
    kk.add_argument("--people", help="number of people, 2..8, or a range such as 3-7")
    kk.add_argument("--depth", type=int, help="statement depth limit (default 2)")
    kk.add_argument("--width", type=int, help="and/or width limit (default 2)")
    igsm = parser.add_argument_group("igsm options")
    igsm.add_argument("--op", help="exact operation count, or a range such as 2-15")
    igsm.add_argument("--preset", choices=["med", "hard"], help="difficulty preset")
    igsm.add_argument("--split", choices=["train", "test"], help="only this template split (default both)")
    gf = parser.add_argument_group("gf options")
    gf.add_argument("--p", type=int, help="field size, 11 or 13")
    gf.add_argument("--kind", help="evaluation, inversion or both")
    gf.add_argument("--steps", help="chain length k, or a range such as 2-5")
    gf.add_argument("--tag-pool", type=int, help="tag each chain's ops with sorted distinct numbers from 1..N (default: 1..k)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def task_options(args: argparse.Namespace) -> dict:
    options = {}
    for task, flags in TASK_FLAGS.items():
        for flag, option in flags.items():
            value = getattr(args, flag)
            if value is None:
                continue
            if task != args.task:
                raise TailorError(f"--{flag.replace('_', '-')} is a {task} option and does not apply to {args.task}")
            options[option] = value
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
