"""Metrics: JSON lines plus TensorBoard scalars (pure Python, no TensorFlow), and a progress bar.

`<run_dir>/metrics.jsonl` gets one line per `write`: {"step": int, "time": unix seconds,
name: value, ...}; non-finite values are written as null (TensorBoard gets the raw value).
`<run_dir>/tensorboard/events.out.tfevents.<time>.<host>.<pid>` holds the same scalars.

TensorBoard event files are TFRecord files: each record is
    uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
(little endian; masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8), and each data is a
serialized `Event` protobuf, encoded here by hand:
    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

# --------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), table driven.
_CRC32C_POLY = 0x82F63B78  # reversed 0x1EDC6F41


def _make_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _make_crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# --------------------------------------------------------------------------------------------
# Protobuf wire format (only what Event/Summary need).
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 negatives are 10-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
    """Serialize an Event with either a file_version or a Summary of simple_value scalars."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _bytes_field(5, summary)
    return out


# --------------------------------------------------------------------------------------------
def _to_float(name: str, value: Any) -> float:
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} must be a scalar number, got {type(value).__name__}") from None


class MetricsWriter:
    """Append scalars to metrics.jsonl and a TensorBoard event file; a no-op unless `is_primary`."""

    def __init__(self, run_dir: str | os.PathLike, *, is_primary: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.is_primary = is_primary
        self._jsonl = None
        self._events = None
        if not is_primary:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            tb_dir = self.run_dir / "tensorboard"
            tb_dir.mkdir(exist_ok=True)
            now = time.time()
            name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
            self._events = open(tb_dir / name, "ab")
            self._events.write(tfrecord_frame(encode_event(now, 0, file_version="brain.Event:2")))
            self._events.flush()

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record scalar `metrics` (numbers or 0-d arrays) at `step`."""
        if not self.is_primary or not metrics:
            return
        now = time.time()
        values = {name: _to_float(name, value) for name, value in metrics.items()}
        record = {"step": int(step), "time": round(now, 3)}
        record.update({name: value if math.isfinite(value) else None for name, value in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._events is not None:
            self._events.write(tfrecord_frame(encode_event(now, step, scalars=values)))
            self._events.flush()

    def close(self) -> None:
        for handle in (self._jsonl, self._events):
            if handle is not None:
                handle.close()
        self._jsonl = self._events = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file; for steps logged twice (after a resume) the last wins."""
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                by_step.setdefault(record["step"], {}).update(record)
    return [by_step[step] for step in sorted(by_step)]


# --------------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar over training steps showing loss, tokens/s and the ETA (hidden unless primary)."""

    def __init__(self, total_steps: int, *, initial_step: int = 0, desc: str = "train", enabled: bool = True):
        self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, unit="step",
                         disable=not enabled, dynamic_ncols=True)
        self._last_time = time.perf_counter()

    def update(self, step: int, *, loss: float | None = None, tokens: int | None = None, **extra: float) -> None:
        """Advance the bar to `step`; `tokens` processed since the previous update give tokens/s."""
        now = time.perf_counter()
        elapsed, self._last_time = now - self._last_time, now
        postfix = {}
        if loss is not None:
            postfix["loss"] = f"{float(loss):.4f}"
        if tokens is not None and elapsed > 0:
            postfix["tok/s"] = f"{tokens / elapsed:,.0f}"
        postfix.update({k: f"{float(v):.4g}" for k, v in extra.items()})
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
