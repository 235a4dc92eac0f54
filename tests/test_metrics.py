"""MetricsWriter: JSONL content and TensorBoard event files read back by an independent decoder."""

from __future__ import annotations

import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from tailor_jax.train.metrics import MetricsWriter, Progress, crc32c, read_metrics


# --- an independent TFRecord + protobuf decoder ----------------------------------------------
def bitwise_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return ~crc & 0xFFFFFFFF


def masked(crc: int) -> int:
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    return (rotated + 0xA282EAD8) & 0xFFFFFFFF


def read_records(blob: bytes) -> list[bytes]:
    records, pos = [], 0
    while pos < len(blob):
        header = blob[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", blob[pos + 8 : pos + 12])
        assert length_crc == masked(bitwise_crc32c(header)), "bad length CRC"
        data = blob[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[pos + 12 + length : pos + 16 + length])
        assert data_crc == masked(bitwise_crc32c(data)), "bad data CRC"
        records.append(data)
        pos += 16 + length
    assert pos == len(blob), "trailing bytes"
    return records


def parse_proto(data: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, raw value) triples of one message."""
    fields, pos = [], 0

    def varint():
        nonlocal pos
        result = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length = varint()
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((field, wire, value))
    return fields


def decode_event(data: bytes) -> dict:
    event = {"scalars": {}}
    for field, wire, value in parse_proto(data):
        if field == 1:
            assert wire == 1
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            assert wire == 0
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for sfield, swire, svalue in parse_proto(value):
                assert (sfield, swire) == (1, 2)
                parts = {f: v for f, _, v in parse_proto(svalue)}
                event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
        else:
            raise AssertionError(f"unexpected Event field {field}")
    return event


# --- tests -----------------------------------------------------------------------------------
def test_crc32c_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283 == bitwise_crc32c(b"123456789")
    assert crc32c(b"") == 0
    blob = bytes(range(256)) * 3
    assert crc32c(blob) == bitwise_crc32c(blob)


def test_event_file_and_jsonl(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 2.5, "lr": jnp.float32(1e-4), "acc": np.array(0.25)})
        writer.write(2, {"loss": float("nan"), "kl/mean": 0.125})
        writer.write(2**40, {"loss": -1.0})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    decoded = [decode_event(r) for r in read_records(events[0].read_bytes())]
    assert decoded[0]["file_version"] == "brain.Event:2" and decoded[0]["scalars"] == {}
    assert [e["step"] for e in decoded[1:]] == [1, 2, 2**40]
    assert decoded[1]["scalars"] == {"loss": 2.5, "lr": pytest.approx(1e-4, rel=1e-6), "acc": 0.25}
    assert np.isnan(decoded[2]["scalars"]["loss"]) and decoded[2]["scalars"]["kl/mean"] == 0.125
    assert all(abs(e["wall_time"] - decoded[0]["wall_time"]) < 60 for e in decoded)

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 2**40]
    assert lines[0]["loss"] == 2.5 and lines[0]["acc"] == 0.25 and isinstance(lines[0]["time"], float)
    assert lines[1]["loss"] is None and lines[1]["kl/mean"] == 0.125


def test_appends_on_resume_and_last_record_wins(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"loss": 3.0})
        writer.write(2, {"loss": 2.0})
    with MetricsWriter(tmp_path, tensorboard=False) as writer:  # resumed from step 1
        writer.write(2, {"loss": 1.5})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 3.0), (2, 1.5)]
    assert not (tmp_path / "tensorboard").exists()


def test_non_primary_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path / "run", is_primary=False) as writer:
        writer.write(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_non_scalar_metric_is_rejected(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        with pytest.raises(TypeError, match="'loss'"):
            writer.write(1, {"loss": np.ones(3)})


def test_progress_shows_loss_and_tokens_per_second(capsys):
    with Progress(10, initial_step=2, desc="sft") as progress:
        progress.update(3, loss=1.23456, tokens=1000)
        progress.update(5, loss=1.0, tokens=1000, lr=3e-4)
        assert progress._bar.n == 5
        postfix = progress._bar.postfix
    assert "loss=1.0000" in postfix and "tok/s=" in postfix and "lr=0.0003" in postfix
