"""Runs `train(load_config(SFTConfig, CONFIG, OVERRIDES))` and, when it finishes, dumps the
final parameters to DUMP.npz (for the exact-resume tests in test_sft.py).

    python tests/sft_worker.py CONFIG DUMP [key=value ...]
"""

import sys

import jax
import numpy as np

from tailor_jax.config import load_config
from tailor_jax.train.sft import SFTConfig, train

if __name__ == "__main__":
    config, dump, *overrides = sys.argv[1:]
    result = train(load_config(SFTConfig, config, overrides))
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(result.state.params))
    np.savez(dump, step=int(result.state.step), **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
