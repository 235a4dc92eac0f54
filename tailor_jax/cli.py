"""The `tailor-jax` command. Each subcommand lives in its own module and registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys

from tailor_jax.errors import TailorError

# name -> module defining `register(subparsers)`; the parser it adds sets `func(args) -> int`.
COMMANDS = {
    "generate": "tailor_jax.data.generate",
    "sft": "tailor_jax.train.sft",
    "build-dataset": "tailor_jax.data.tfds_builders",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-jax",
        description="RL post-training of language models on verifiable reasoning tasks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TailorError as err:
        print(f"tailor-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tailor-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
