"""Runs `train(load_config(SFTConfig, CONFIG, OVERRIDES))` and, when it finishes, dumps the
final parameters to DUMP.npz (for the exact-resume tests in test_sft.py). With
`--kill-after-step N` the process SIGKILLs itself right after step N's metrics are logged
(before that step's checkpoint is saved; see grpo_toy.install_kill_after_step).

    python tests/sft_worker.py [--kill-after-step N] CONFIG DUMP [key=value ...]
"""

import sys

import jax
import numpy as np

from grpo_toy import install_kill_after_step
from tailor_jax.config import load_config
from tailor_jax.train.sft import SFTConfig, train

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--kill-after-step":
        install_kill_after_step(int(args[1]))
        args = args[2:]
    config, dump, *overrides = args
    result = train(load_config(SFTConfig, config, overrides))
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(result.state.params))
    np.savez(dump, step=int(result.state.step), **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
