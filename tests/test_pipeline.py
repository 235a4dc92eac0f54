"""The grain SFT pipeline: masks, packing, padding, sharding, epochs and iterator state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tailor_jax.data import pipeline
from tailor_jax.errors import TailorError
from tailor_jax.tasks.prompt import render_prompt

from sft_toy import ToySumTask, toy_records, toy_tokenizer

TASK = ToySumTask()
CONFIG = pipeline.PipelineConfig(seq_len=48, batch_size=3, seed=7, num_epochs=1)


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


def _examples_in(batch):
    """The (inputs, targets, loss_mask) of each example in a packed/padded batch, by segment."""
    out = []
    for row in range(batch["inputs"].shape[0]):
        seg = batch["segment_ids"][row]
        for s in sorted(set(seg[seg > 0].tolist())):
            idx = np.flatnonzero(seg == s)
            assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)), "segments are contiguous"
            assert np.array_equal(batch["positions"][row, idx], np.arange(len(idx)))
            out.append(tuple(batch[k][row, idx].tolist() for k in ("inputs", "targets", "loss_mask")))
        assert not batch["loss_mask"][row, seg == 0].any(), "no loss on padding"
    return out


def _expected(tokenizer, records, config):
    tokenize = pipeline.make_tokenize_fn(TASK, tokenizer, config)
    return sorted(tuple(v.tolist() for v in tokenize(r).values()) for r in records)


def test_tokenize_masks_only_the_completion(tokenizer):
    record = toy_records(1, seed=1)[0]
    for prefill in (False, True):
        prompt = render_prompt(TASK.question(record), think_prefill=prefill)
        example = pipeline.tokenize_example(tokenizer, prompt, TASK.target(record), seq_len=64)
        ids = np.concatenate([example["inputs"][:1], example["targets"]])
        assert np.array_equal(example["inputs"][1:], example["targets"][:-1])
        n_prompt = len(example["inputs"]) - int(example["loss_mask"].sum()) + 1
        assert tokenizer.decode(ids[:n_prompt], skip_special_tokens=True) == prompt.text
        completion = tokenizer.decode(example["targets"][example["loss_mask"] == 1])
        assert completion == TASK.target(record)[len(prompt.prefill) :] + "<|eos|>"


def test_too_long_example_is_a_clear_error(tokenizer):
    record = toy_records(1, seed=1)[0]
    with pytest.raises(TailorError, match="raise data.seq_len"):
        pipeline.tokenize_example(tokenizer, render_prompt(TASK.question(record)), TASK.target(record), seq_len=8)


@pytest.mark.parametrize("packing", [True, False])
def test_one_epoch_holds_every_example_once(tokenizer, packing):
    records = toy_records(23, seed=2)
    config = dataclasses.replace(CONFIG, packing=packing, buckets=(24, 48))
    batches = list(pipeline.sft_dataset(records, TASK, tokenizer, config))
    seen = sorted(e for b in batches for e in _examples_in(b))
    assert seen == _expected(tokenizer, records, config)
    for b in batches:
        assert set(b) == set(pipeline.BATCH_KEYS)
        assert all(v.dtype == np.int32 and v.shape == b["inputs"].shape for v in b.values())
        assert b["inputs"].shape[0] == config.batch_size
        assert b["inputs"].shape[1] in ((48,) if packing else (24, 48))
    if packing:  # packing actually packs: fewer rows than examples
        assert sum(int((b["segment_ids"].max(axis=1) > 0).sum()) for b in batches) < len(records)


def test_shuffle_is_seeded_and_reshuffled_each_epoch(tokenizer):
    records = toy_records(10, seed=3)
    ds = pipeline.shuffled_records(records, seed=1, num_epochs=2)
    ids = [r["id"] for r in ds]
    first, second = ids[:10], ids[10:]
    assert sorted(first) == sorted(second) == sorted(r["id"] for r in records)
    assert first != second
    assert ids == [r["id"] for r in pipeline.shuffled_records(records, seed=1, num_epochs=2)]
    assert ids != [r["id"] for r in pipeline.shuffled_records(records, seed=2, num_epochs=2)]


def test_host_shards_are_disjoint_and_cover_the_epoch():
    records = toy_records(12, seed=4)
    shards = [[r["id"] for r in pipeline.shuffled_records(records, 5, 1, i, 3)] for i in range(3)]
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) == 12
    with pytest.raises(TailorError):
        pipeline.shuffled_records(records, 5, 1, 3, 3)
    with pytest.raises(TailorError, match="empty"):
        pipeline.shuffled_records([], 5, 1)


@pytest.mark.parametrize("packing", [True, False])
def test_iterator_state_resumes_exactly(tokenizer, packing):
    records = toy_records(40, seed=6)
    config = dataclasses.replace(CONFIG, packing=packing, num_epochs=None)
    ds = pipeline.sft_dataset(records, TASK, tokenizer, config)
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    resumed = iter(pipeline.sft_dataset(records, TASK, tokenizer, config))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in pipeline.BATCH_KEYS:
            np.testing.assert_array_equal(got[k], want[k])


def test_malformed_record_is_a_clear_error():
    from tailor_jax.tasks import get_task

    task = get_task("gf", steps="2-4", tag_pool=9)
    record = next(task.generate(1, seed=0))
    for broken in ({**record, "tags": record["tags"][:1]}, {k: v for k, v in record.items() if k != "ops"}):
        with pytest.raises(TailorError) as err:
            pipeline.record_to_text(task, broken, "plain", False)
        assert "\n" not in str(err.value) and f"gf record {record['id']!r} cannot be rendered" in str(err.value)


def test_bucket_errors(tokenizer):
    records = toy_records(5, seed=8)
    with pytest.raises(TailorError, match="must not exceed"):
        pipeline.sft_dataset(records, TASK, tokenizer, dataclasses.replace(CONFIG, packing=False, buckets=(64,)))
    small = dataclasses.replace(CONFIG, packing=False, buckets=(4,))
    with pytest.raises(TailorError, match="fits no bucket"):
        next(iter(pipeline.sft_dataset(records, TASK, tokenizer, small)))
