"""Runs `tailor-jax ARGS...` with the digit reward of grpo_toy.py and, given `--kill-after-step N`,
a SIGKILL right after step N is logged (for the resume tests in test_grpo_trainer.py).

    python tests/grpo_worker.py [--kill-after-step N] grpo CONFIG [key=value ...]
"""

import sys

import grpo_toy

from tailor_jax.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--kill-after-step":
        grpo_toy.install_kill_after_step(int(args[1]))
        args = args[2:]
    grpo_toy.install_digit_reward()
    sys.exit(main(args))
