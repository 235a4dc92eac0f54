"""Test helpers for GRPO runs in a subprocess or in-process: a trivially learnable reward
("write digits") that a tiny random model can improve on within a few steps, and a hook that
SIGKILLs the process right after a given step's metrics are logged (before that step's
checkpoint is saved), so a kill lands at a chosen, reproducible point of a run."""

from __future__ import annotations

import os
import signal
from itertools import islice
from pathlib import Path

from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.model import create_model, get_preset, save_pretrained
from tailor_jax.tasks import get_task
from tailor_jax.tasks.gf import GFChain
from tailor_jax.train import metrics as metrics_lib


def make_tiny_init(path: Path) -> Path:
    """A tiny random Qwen2-shaped model + a BPE tokenizer trained on GF text, in HF format."""
    task = get_task("gf", steps="1-3")
    records = list(islice(task.generate(300, 0), 300))
    texts = [task.prompt(r).text + task.target(r) for r in records]
    symbols = sorted(set(records[0]["symbols"].values()))
    tokenizer = tok_lib.train_bpe_tokenizer(texts, 320, symbols)
    tok_lib.save_tokenizer(tokenizer, path)
    config = get_preset("tiny").replace(
        vocab_size=-(-len(tokenizer) // 8) * 8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
        num_kv_heads=1, head_dim=16, bos_token_id=tokenizer.bos_token_id, eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tok_lib.pad_id(tokenizer),
    )
    save_pretrained(create_model(config, seed=0), path)
    return path


def digit_share(completion: str) -> float:
    """The share of the completion's characters that are digits (0 for an empty completion)."""
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


def install_digit_reward() -> None:
    """Every reward function of the GF task scores `digit_share` instead (rewards vary within a
    group from the first step, so the gradients are not zero)."""
    GFChain.reward = lambda self, fn, record, completion, *, finished=True: digit_share(completion)


def install_kill_after_step(step: int) -> None:
    """SIGKILL this process once the metrics of `step` have been written."""
    write = metrics_lib.MetricsWriter.write

    def write_then_kill(self, at_step, metrics):
        write(self, at_step, metrics)
        if int(at_step) == step:
            os.kill(os.getpid(), signal.SIGKILL)

    metrics_lib.MetricsWriter.write = write_then_kill
