"""Trainer rows from a rollout, before any device work: the shared-prompt layout, DASH's row
filter, and the packing of the kept rows into micro-batches. Pure functions of numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.parallel.sharding import logical_sharding
from tailor_jax.sampling.buckets import bucket

Rows = dict[str, np.ndarray]

PROMPT_KEYS = ("prompt_tokens", "prompt_positions", "prompt_mask")  # per distinct prompt; other keys are per row
TIME_KEYS = ("tokens", "positions", "completion_mask", "sampler_logp", "old_logp")  # per row, along the completion


def build_rows(
    prompt_ids: Sequence[Sequence[int]], completions: np.ndarray, lengths: np.ndarray, pad_id: int
) -> Rows:
    """Trainer rows in the shared-prompt layout: each distinct prompt once, each row its completion.

    Per distinct prompt u (left-padded to P): `prompt_tokens`, `prompt_positions`, `prompt_mask`
    [U, P]. Per row n: `row_prompt` [N] (its prompt u), the completion `tokens` [N, C] with
    `positions` continuing the prompt's, and `completion_mask` [N, C] (1 up to the row's length).
    The G rows of a group read one prompt, so the trainer computes it once (see
    `Transformer.shared_prefix_forward`).
    """
    n, c = completions.shape
    distinct: dict[tuple[int, ...], int] = {}
    row_prompt = np.array([distinct.setdefault(tuple(int(t) for t in ids), len(distinct)) for ids in prompt_ids], np.int32)
    p = bucket(max(len(ids) for ids in distinct), minimum=16)
    prompt_tokens = np.full((len(distinct), p), pad_id, np.int32)
    prompt_mask = np.zeros((len(distinct), p), bool)
    for u, ids in enumerate(distinct):
        prompt_tokens[u, p - len(ids) :] = ids
        prompt_mask[u, p - len(ids) :] = True
    prompt_positions = np.maximum(np.cumsum(prompt_mask, axis=1) - 1, 0).astype(np.int32)
    completion_mask = np.arange(c)[None, :] < np.asarray(lengths)[:, None]
    positions = (prompt_mask.sum(axis=1)[row_prompt][:, None] + np.arange(c)[None, :]).astype(np.int32)
    return {"prompt_tokens": prompt_tokens, "prompt_positions": prompt_positions, "prompt_mask": prompt_mask,
            "row_prompt": row_prompt, "tokens": np.asarray(completions, np.int32), "positions": positions,
            "completion_mask": completion_mask.astype(np.float32)}


def select_rows(advantages: np.ndarray, tau: float, enabled: bool) -> np.ndarray:
    """Indices of the rows to train on: |A| > tau when filtering (at least the largest |A|)."""
    if not enabled:
        return np.arange(len(advantages))
    keep = np.flatnonzero(np.abs(advantages) > tau)
    return keep if len(keep) else np.array([int(np.argmax(np.abs(advantages)))])


def order_by_group_length(index: np.ndarray, lengths: np.ndarray, group: int) -> np.ndarray:
    """`index` reordered so that groups with short completions come first, each group's rows
    together: micro-batches then hold completions of similar length, and each is only as wide
    as its longest (see `pack_micro_batches`)."""
    longest = lengths.reshape(-1, group).max(axis=1)
    return index[np.lexsort((index, index // group, longest[index // group]))]


def _take_prompts(rows: Rows, row_prompt: np.ndarray, slots: int) -> Rows:
    """The prompts `row_prompt` refers to, packed into `slots` slots (the rest all-padding), and
    `row_prompt` renumbered to them."""
    used = np.unique(row_prompt)
    if len(used) > slots:
        raise TailorError(f"a micro-batch reads {len(used)} prompts but has {slots} prompt slots")
    take = np.concatenate([used, np.full(slots - len(used), used[0])])
    out = {k: rows[k][take] for k in PROMPT_KEYS}
    out["prompt_mask"][len(used) :] = False
    out["row_prompt"] = np.searchsorted(used, row_prompt).astype(np.int32)
    return out


def pack_micro_batches(
    rows: Rows, index: np.ndarray, micro: int, prompt_slots: int | None = None, slot_multiple: int = 1,
    min_width: int = 16,
) -> list[Rows]:
    """Gather `index` rows into micro-batches of `micro` rows; the last one is padded with
    all-masked copies of a real row (zero weight, zero advantage). Each micro-batch carries the
    prompts its rows read in `prompt_slots` slots, the same count in every micro-batch so they
    share one compiled program. By default that is the most prompts any micro-batch reads,
    rounded up to a power of two (few distinct programs over a run) and a multiple of
    `slot_multiple` (the data parallelism), at most min(micro, number of prompts) so rounded.

    Each micro-batch is cut along the completion to its longest masked completion, rounded up to
    a power of two (at least `min_width`, at most the full width): past it every row is padding,
    and the update's cost grows with the width."""
    shared = "row_prompt" in rows
    if shared and prompt_slots is None:
        needed = max(len(np.unique(rows["row_prompt"][index[s : s + micro]])) for s in range(0, len(index), micro))
        cap = -(-min(micro, len(rows["prompt_tokens"])) // slot_multiple) * slot_multiple
        prompt_slots = min(bucket(needed, minimum=1, multiple=slot_multiple), cap)
    batches = []
    for start in range(0, len(index), micro):
        part = index[start : start + micro]
        fill = micro - len(part)
        take = np.concatenate([part, np.full(fill, part[0])])
        batch = {k: v[take] for k, v in rows.items() if k not in PROMPT_KEYS}
        if "completion_mask" in batch:
            full = batch["completion_mask"].shape[1]
            width = min(full, bucket(int((batch["completion_mask"][: len(part)] > 0).sum(axis=1).max()), minimum=min_width))
            batch.update({k: batch[k][:, :width] for k in TIME_KEYS if k in batch})
        if shared:
            batch.update(_take_prompts(rows, batch["row_prompt"], prompt_slots))
        if fill:
            batch["completion_mask"] = batch["completion_mask"].copy()
            batch["completion_mask"][len(part) :] = 0.0
            batch["advantages"] = batch["advantages"].copy()
            batch["advantages"][len(part) :] = 0.0
        batches.append(batch)
    return batches


def place_rows(rows: Rows, mesh, rules) -> dict[str, jax.Array]:
    """Put host rows (identical on every process) on the mesh, split along the batch axis
    (rows and prompts alike)."""
    return {
        k: jax.device_put(v, logical_sharding(("batch",) + (None,) * (v.ndim - 1), mesh, rules, v.shape))
        for k, v in rows.items()
    }

