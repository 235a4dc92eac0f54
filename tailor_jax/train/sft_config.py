"""The SFT config (`tailor-jax sft CONFIG`, the `sft:` section of a run config); see docs/sft.md."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from tailor_jax.config import CheckpointConfig, OptimizerConfig, require
from tailor_jax.data.tokenizer import MIN_VOCAB_SIZE
from tailor_jax.parallel.mesh import MeshConfig
from tailor_jax.train.memory_config import MemoryConfig
from tailor_jax.train.metrics import WandbConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the SFT records come from: a JSONL file or a built TFDS/ArrayRecord dataset."""

    task: str = "gf"
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. {p: 11}
    train_file: str | None = None  # JSONL records (from `tailor-jax generate` or the Tailor pipeline)
    eval_file: str | None = None
    tfds_dir: str | None = None  # a TFDS data_dir holding the dataset built by tfds_builders
    tfds_config: str | None = None
    train_split: str = "train"
    eval_split: str | None = "test"
    prompt_style: Literal["plain", "chat"] = "plain"
    think_prefill: bool = False
    seq_len: int = 256
    packing: bool = True
    buckets: tuple[int, ...] = ()

    def __post_init__(self):
        require(
            (self.train_file is None) != (self.tfds_dir is None),
            "set exactly one of data.train_file (JSONL) and data.tfds_dir (a TFDS dataset)",
        )
        require(self.tfds_dir is None or self.tfds_config is not None, "data.tfds_dir needs data.tfds_config")
        require(self.seq_len >= 2, f"seq_len must be >= 2, got {self.seq_len}")
        require(all(b >= 2 for b in self.buckets), f"buckets must be >= 2, got {list(self.buckets)}")

    @property
    def longest(self) -> int:
        """The longest row a batch can have: the largest bucket (padding mode), else seq_len."""
        return max(self.buckets or (self.seq_len,))


@dataclasses.dataclass(frozen=True)
class PositionGapsConfig:
    """Random gaps in the position ids of training examples, so that attention cannot lean on
    exact distances and carries over to longer inputs (randomized positions, after Ruoss et al.
    2023). Off at `prob` 0. Otherwise a fraction `contiguous` of the examples keeps positions
    0, 1, 2, ...; in the others every token after the first advances the position by 1 + g with
    probability `prob`, g uniform in 1..max_gap. Evaluation and sampling use contiguous positions."""

    prob: float = 0.0
    max_gap: int = 3
    contiguous: float = 0.5

    def __post_init__(self):
        require(0 <= self.prob <= 1, f"position_gaps.prob must be in [0, 1], got {self.prob}")
        require(self.max_gap >= 1, f"position_gaps.max_gap must be >= 1, got {self.max_gap}")
        require(0 <= self.contiguous <= 1, f"position_gaps.contiguous must be in [0, 1], got {self.contiguous}")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    path: str | None = None  # a directory with tokenizer.json (e.g. the pretrained checkpoint)
    vocab_size: int = 512  # when training a BPE (path null): its vocabulary size

    def __post_init__(self):
        require(self.vocab_size >= MIN_VOCAB_SIZE, f"vocab_size must be >= {MIN_VOCAB_SIZE}, got {self.vocab_size}")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"  # a from-scratch preset (vocab_size follows the tokenizer)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. {hidden_size: 64}; with pretrained: remat/attention only
    pretrained: str | None = None  # a local Hugging Face checkpoint directory instead of a preset


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    run_dir: str
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig.auto)
    position_gaps: PositionGapsConfig = dataclasses.field(default_factory=PositionGapsConfig)
    memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)
    seed: int = 0
    steps: int = 1000
    batch_size: int = 16  # global rows per optimizer step (all hosts, all micro-batches)
    accum_steps: int = 1  # micro-batches per step (gradient accumulation)
    num_epochs: int | None = None  # null: cycle through the data until `steps`
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8  # eval-loss batches per evaluation
    eval_samples: int = 0  # held-out problems decoded greedily per evaluation (0: none)
    max_new_tokens: int = 256
    progress: bool = True
    record_batches: bool = False  # append a hash of every batch to run_dir/batches.txt (tests)
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or gradient norm: stop, or skip that update (train/guard.py)
    max_consecutive_skips: int = 10  # nonfinite=skip: stop after this many skipped steps in a row
    wandb: WandbConfig | None = None  # log to Weights & Biases too (project, name, mode); see docs/training.md#metrics

    def __post_init__(self):
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}")
        require(
            self.batch_size % self.accum_steps == 0,
            f"batch_size ({self.batch_size}) must be a multiple of accum_steps ({self.accum_steps})",
        )
        require(self.num_epochs is None or self.num_epochs >= 1, f"num_epochs must be >= 1 or null, got {self.num_epochs}")
        require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        require(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        require(self.eval_batches >= 0 and self.eval_samples >= 0, "eval_batches and eval_samples must be >= 0")
        require(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(0 <= self.seed < 2**31, f"seed must be in [0, 2^31), got {self.seed}")
        require(self.max_consecutive_skips >= 1, f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
