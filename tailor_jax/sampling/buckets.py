"""Static shapes for the sampler: length / batch buckets and left-padded prompt arrays (host side, NumPy)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tailor_jax.errors import TailorError


def bucket(n: int, minimum: int = 16, multiple: int = 1) -> int:
    """Smallest power of two >= max(n, minimum), rounded up to a multiple of `multiple`.

    Powers of two keep the number of compiled programs logarithmic in the range of sizes seen.
    """
    size = max(int(n), int(minimum), 1)
    size = 1 << (size - 1).bit_length()
    return -(-size // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Prompts left-padded to one length: the last column is every row's last real token."""

    tokens: np.ndarray  # int32 [batch, length]
    positions: np.ndarray  # int32 [batch, length]; a row's first real token has position 0
    mask: np.ndarray  # bool [batch, length]; True on real tokens
    lengths: np.ndarray  # int32 [batch]; real tokens per row (0 for filler rows)


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> list[list[int]]:
    """Validate prompts (a non-empty list of non-empty token-id lists inside the vocabulary)."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise TailorError("prompts must be a non-empty list of token-id lists (tokenize text first)")
    checked = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)):
            raise TailorError(f"prompt {i} is a string: pass token ids (tokenize text first)")
        ids = [int(t) for t in prompt]
        if not ids:
            raise TailorError(f"prompt {i} is empty: every prompt needs at least one token (e.g. BOS)")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise TailorError(
                f"prompt {i} has token id {bad[0]} outside the model vocabulary [0, {vocab_size})"
            )
        checked.append(ids)
    return checked


def pad_prompts(prompts: Sequence[Sequence[int]], length: int, batch: int, pad_id: int = 0) -> PromptBatch:
    """Left-pad `prompts` to `length` columns and add filler rows up to `batch` rows.

    Filler rows hold one real `pad_id` token in the last column (so no attention row is fully
    masked); the sampler marks them done from the start and drops them.
    """
    if len(prompts) > batch:
        raise ValueError(f"{len(prompts)} prompts do not fit a batch of {batch}")
    tokens = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), bool)
    lengths = np.zeros((batch,), np.int32)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        if n > length:
            raise ValueError(f"prompt of {n} tokens does not fit {length} columns")
        tokens[row, length - n:] = prompt
        mask[row, length - n:] = True
        lengths[row] = n
    mask[len(prompts):, -1] = True
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return PromptBatch(tokens=tokens, positions=positions, mask=mask, lengths=lengths)


def stop_sequence_array(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Stop sequences as an int32 [num, max_len] array right-aligned and left-filled with -1 (matches nothing)."""
    sequences = [[int(t) for t in s] for s in sequences]
    if any(len(s) == 0 for s in sequences):
        raise TailorError("a stop sequence is empty: give at least one token id per stop sequence")
    width = max((len(s) for s in sequences), default=1)
    array = np.full((max(len(sequences), 1), width), -1, np.int32)
    for row, s in enumerate(sequences):
        array[row, width - len(s):] = s
    return array
