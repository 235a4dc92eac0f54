"""The `memory:` section of the SFT and GRPO configs, apart from the plan that reads it
(train/memory_plan.py), so that the trainers' configs import no step code."""

from __future__ import annotations

import dataclasses

from tailor_jax.config import require
from tailor_jax.model.logprobs import DEFAULT_CHUNK_TOKENS

ESTIMATES = ("extrapolate", "exact")  # how the memory plan estimates (train/memory_plan.py)


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """Memory knobs of a trainer config (`memory:` in the SFT / GRPO sections)."""

    logprob_chunk: int | None = DEFAULT_CHUNK_TOKENS  # tokens per chunk of the vocabulary projection (model.logprobs); null: by the vocabulary size
    device_memory_gib: float | None = None  # per-device memory; null: detected (GPU/TPU), unchecked on CPU
    estimate: str = "extrapolate"  # extrapolate: compile 1-3 layers and fit a line (memory_plan.FIT_LAYERS); exact: the whole model

    def __post_init__(self):
        require(self.estimate in ESTIMATES,
                f"memory.estimate must be one of {', '.join(ESTIMATES)}, got {self.estimate!r}")
        require(self.logprob_chunk is None or self.logprob_chunk >= 1,
                f"memory.logprob_chunk must be >= 1 or null, got {self.logprob_chunk}")
        require(self.device_memory_gib is None or self.device_memory_gib > 0,
                f"memory.device_memory_gib must be > 0 or null, got {self.device_memory_gib}")
