"""The SFT input pipeline on grain.

random-access records (TFDS/ArrayRecord source, a list, ...)
  -> shuffle with a seed, reshuffled every epoch (grain `MapDataset`)
  -> this host's share of the global stream (`jax.process_index/count`)
  -> tokenize prompt + completion; loss mask on completion tokens only
  -> pack several examples per row (segment ids + positions, attention never crosses examples)
     or pad each batch to the smallest length bucket that fits it
  -> per-host batches of numpy arrays (grain `IterDataset`)

Iterators are grain `DatasetIterator`s, so `get_state()`/`set_state()` checkpoint the exact
position (including partly filled packing bins).

Every batch is a dict of int32 arrays of shape [batch, seq]:
`inputs` (token ids), `targets` (the next token at each position), `loss_mask` (1 where the
target is a completion token), `segment_ids` (1, 2, ... per packed example, 0 on padding) and
`positions` (0-based within each example).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grain
import numpy as np

from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import Task

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
_PACKED_FEATURES = ("inputs", "targets", "loss_mask")


@dataclass(frozen=True)
class PipelineConfig:
    seq_len: int = 256  # tokens per row (packing) or the largest bucket (padding)
    batch_size: int = 8  # rows per batch on this host
    packing: bool = True
    buckets: tuple[int, ...] = ()  # padding mode: row lengths to pad to; () means (seq_len,)
    seed: int = 0
    num_epochs: int | None = None  # None: repeat forever
    prompt_style: str = "plain"
    think_prefill: bool = False


def tokenize_example(tokenizer, prompt, completion: str, seq_len: int, example_id: str = "?") -> dict:
    """One SFT example as next-token arrays of length len(prompt) + len(completion) - 1."""
    prompt_ids = tok_lib.encode_prompt(tokenizer, prompt)
    completion_ids = tok_lib.encode_completion(tokenizer, completion, prompt)
    ids = np.asarray(prompt_ids + completion_ids, dtype=np.int32)
    is_completion = np.zeros(len(ids), dtype=np.int32)
    is_completion[len(prompt_ids) :] = 1
    if len(ids) - 1 > seq_len:
        raise TailorError(
            f"SFT example {example_id} has {len(ids)} tokens, more than seq_len + 1 = {seq_len + 1}; "
            "raise data.seq_len or drop long examples"
        )
    return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": is_completion[1:]}


def record_to_text(task: Task, record: dict, style: str, think_prefill: bool):
    """(prompt, completion) of a record: its own `completion` (curated demonstrations) when
    present, else the task's canonical target."""
    try:
        prompt = task.prompt(record, style=style, think_prefill=think_prefill)
        completion = record.get("completion")
        if completion is None:
            completion = task.target(record)
    except TailorError:
        raise
    except Exception as err:  # a record with missing or malformed fields, e.g. from a hand-edited file
        raise TailorError(
            f"{task.name} record {record.get('id', '?')!r} cannot be rendered ({type(err).__name__}: {err}); "
            f"check that it has the fields `tailor-jax generate {task.name}` writes"
        ) from None
    return prompt, completion


def completion_lengths(task: Task, tokenizer, records: Sequence[dict], style: str, think_prefill: bool,
                       limit: int = 2000) -> list[int]:
    """Tokens a model writes for each record's completion (after any prefill, end token
    included): what its generation budget must hold. At most `limit` records, evenly spaced;
    integer indexing only, as a TFDS record source allows."""
    lengths = []
    for index in range(0, len(records), max(1, -(-len(records) // limit))):
        prompt, completion = record_to_text(task, records[index], style, think_prefill)
        lengths.append(len(tok_lib.encode_completion(tokenizer, completion, prompt)))
    return lengths


def budget_shortfall(lengths: Sequence[int], budget: int, knob: str) -> str | None:
    """A warning when some of `lengths` (tokens a model must write, end token included) exceed
    the generation budget `knob` = `budget`: such completions are cut there and score as wrong,
    so an evaluation or a rollout at that budget under-reports the model. None when all fit."""
    over = sum(n > budget for n in lengths)
    if not over:
        return None
    p95 = int(np.percentile(lengths, 95))
    return (f"{over} of {len(lengths)} demonstrations checked ({over / len(lengths):.0%}) need more than "
            f"{knob}={budget} tokens (longest {max(lengths)}, 95th percentile {p95}); a model that writes them out "
            f"is cut there and scored wrong: raise {knob} to at least {max(lengths)}")


def make_tokenize_fn(task: Task, tokenizer, config: PipelineConfig) -> Callable[[dict], dict]:
    def tokenize(record: dict) -> dict:
        prompt, completion = record_to_text(task, record, config.prompt_style, config.think_prefill)
        return tokenize_example(tokenizer, prompt, completion, config.seq_len, str(record.get("id", "?")))

    return tokenize


def shuffled_records(
    source: Sequence[dict], seed: int, num_epochs: int | None, shard_index: int = 0, shard_count: int = 1
) -> grain.MapDataset:
    """The global record stream (a fresh permutation each epoch), then every `shard_count`-th
    element from `shard_index`: hosts read disjoint parts of each epoch."""
    if len(source) == 0:
        raise TailorError("the SFT dataset is empty; generate some records first")
    if not 0 <= shard_index < shard_count:
        raise TailorError(f"shard index {shard_index} is not in 0..{shard_count - 1}")
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    return ds


def pack_rows(examples: grain.IterDataset, seq_len: int, rows: int, seed: int) -> grain.IterDataset:
    """First-fit pack examples into `rows`-row batches of length `seq_len`."""
    packed = grain.experimental.FirstFitPackIterDataset(
        examples,
        length_struct={k: seq_len for k in _PACKED_FEATURES},
        num_packing_bins=rows,
        seed=seed,
        shuffle_bins=False,
    )
    return packed.batch(rows, drop_remainder=False).map(lambda p: _packed_to_batch(p, rows))


def _packed_to_batch(packed: dict, rows: int) -> dict:
    """Rename grain's packed features; a short final batch gets all-padding rows."""
    named = {k: packed[k] for k in _PACKED_FEATURES}
    named["segment_ids"] = packed["inputs_segment_ids"]
    named["positions"] = packed["inputs_positions"]
    batch = {}
    for k in BATCH_KEYS:
        value = np.zeros((rows, named[k].shape[1]), np.int32)
        value[: len(named[k])] = named[k]
        batch[k] = value
    return batch


def pad_batch(examples: Sequence[dict], buckets: Sequence[int], rows: int) -> dict:
    """Stack examples into a [rows, L] batch, L the smallest bucket that fits the longest one.

    A short final batch is filled with all-padding rows (zero loss mask) so shapes stay static.
    """
    longest = max(len(e["inputs"]) for e in examples)
    length = next((b for b in sorted(buckets) if b >= longest), None)
    if length is None:
        raise TailorError(f"an example of {longest} tokens fits no bucket {tuple(buckets)}; add a larger bucket")
    batch = {k: np.zeros((rows, length), np.int32) for k in BATCH_KEYS}
    for row, example in enumerate(examples):
        n = len(example["inputs"])
        for k in _PACKED_FEATURES:
            batch[k][row, :n] = example[k]
        batch["segment_ids"][row, :n] = 1
        batch["positions"][row, :n] = np.arange(n)
    return batch


def sft_dataset(
    source: Sequence[dict],
    task: Task,
    tokenizer,
    config: PipelineConfig,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.IterDataset:
    """The full SFT pipeline for this host; `iter(...)` gives a checkpointable iterator."""
    if config.seq_len < 2 or config.batch_size < 1:
        raise TailorError(f"seq_len must be >= 2 and batch_size >= 1, got {config.seq_len} and {config.batch_size}")
    records = shuffled_records(source, config.seed, config.num_epochs, shard_index, shard_count)
    # One reader thread with a short read-ahead: grain's default (16 threads, 500 elements) polls
    # every buffered future per element, which costs more than the tokenization it overlaps.
    read_options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=16)
    examples = records.map(make_tokenize_fn(task, tokenizer, config)).to_iter_dataset(read_options)
    if config.packing:
        return pack_rows(examples, config.seq_len, config.batch_size, config.seed)
    buckets = tuple(config.buckets) or (config.seq_len,)
    if max(buckets) > config.seq_len:
        raise TailorError(f"buckets {buckets} must not exceed seq_len {config.seq_len}")
    rows = config.batch_size
    return examples.batch(rows, batch_fn=lambda exs: pad_batch(exs, buckets, rows))


def host_shard() -> tuple[int, int]:
    """(this process's index, number of processes) from JAX's multi-controller runtime."""
    import jax

    return jax.process_index(), jax.process_count()
