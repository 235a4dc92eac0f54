"""The `tailor-jax` command. Each subcommand lives in its own module and registers itself."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tailor_jax.errors import TailorError

# name -> module defining `register(subparsers)`; the parser it adds sets `func(args) -> int`.
# Only the chosen command's module is imported (they pull in jax, grain, orbax, TFDS).
COMMANDS = {
    "generate": "tailor_jax.data.generate",
    "sft": "tailor_jax.train.sft",
    "grpo": "tailor_jax.train.grpo.trainer",
    "build-dataset": "tailor_jax.data.tfds_builders",
    "convert": "tailor_jax.model.convert",
    "run": "tailor_jax.run",
    "study": "tailor_jax.study",
    "eval": "tailor_jax.run.eval_command",
    "report": "tailor_jax.eval.report_command",
    "tailor": "tailor_jax.tailor.cli",
    "primitives": "tailor_jax.tailor.cli",
}

# One-line descriptions for `tailor-jax --help` (shown without importing the modules).
COMMAND_HELP = {
    "generate": "generate task problems as JSON lines",
    "build-dataset": "build a TFDS/ArrayRecord dataset of a task",
    "sft": "supervised fine-tuning (the warm start)",
    "grpo": "GRPO reinforcement learning (DASH, dynamic sampling, curriculum)",
    "convert": "convert checkpoints to/from Hugging Face format",
    "run": "the whole pipeline: data, warm start, SFT, GRPO, evaluation, report",
    "study": "a grid of runs (warm starts x seeds ...): resumable, with a report of means and spreads",
    "eval": "evaluate a model on held-out problems per difficulty level",
    "report": "write a run's report and plots, or overlay several runs",
    "tailor": "build a primitive-tailored SFT set (analyse, discover, synthesize, curate) and baselines",
    "primitives": "list a task's reasoning primitives with an example trace each",
}

# Commands that compute on JAX devices. Each first exposes one JAX CPU device per core
# (parallel.cpu; TAILOR_CPU_DEVICES or XLA_FLAGS choose otherwise). On several hosts (a TPU
# slice, or processes given a coordinator through TAILOR_/JAX_ COORDINATOR_ADDRESS,
# NUM_PROCESSES, PROCESS_ID) each process then joins one cluster; in one process that is a no-op.
DISTRIBUTED_COMMANDS = ("sft", "grpo", "run", "eval", "tailor")


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The full parser for `chosen`; other commands get a bare placeholder (import-free help)."""
    parser = argparse.ArgumentParser(
        prog="tailor-jax",
        description="RL post-training of language models on verifiable reasoning tasks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).register(subparsers)
        elif name not in subparsers.choices:  # a module may register several commands
            subparsers.add_parser(name, help=COMMAND_HELP.get(name, f"see `tailor-jax {name} --help`"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `key=value ...` at the first option (`run CONFIG --dry-run a=1`);
    # overrides after an option still belong to the command.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides, extra = list(args.overrides or []) + extra, []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command in DISTRIBUTED_COMMANDS:
            from tailor_jax.parallel.cpu import configure_cpu_devices
            from tailor_jax.parallel.distributed import initialize_distributed

            configure_cpu_devices()
            initialize_distributed()
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        # The reader went away (`tailor-jax study --dry-run | head`): stop quietly, as a
        # command killed by SIGPIPE would. Python's own flush at exit must not retry the write.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except TailorError as err:
        print(f"tailor-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tailor-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
