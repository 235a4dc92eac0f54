"""MetricsWriter: JSONL content, TensorBoard event files (framing and CRCs checked here, records
parsed with tensorboardX's protobuf) and an offline Weights & Biases run, each read back."""

from __future__ import annotations

import json
import struct
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from tailor_jax.errors import TailorError
from tailor_jax.train.metrics import MetricsWriter, Progress, WandbConfig, read_metrics


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


def decode_event(data: bytes) -> dict:
    """One event record, parsed with tensorboardX's `Event` protobuf."""
    from tensorboardX.proto import event_pb2

    event = event_pb2.Event.FromString(data)
    scalars = {}
    for value in event.summary.value:
        assert value.WhichOneof("value") == "simple_value", value
        scalars[value.tag] = value.simple_value
    out = {"wall_time": event.wall_time, "step": event.step, "scalars": scalars}
    if event.file_version:
        out["file_version"] = event.file_version
    return out


def read_wandb_records(path) -> list:
    """The protobuf records of a W&B transaction log (`run-<id>.wandb`: a 7-byte header, then
    LevelDB-style log blocks of 32 KiB, each chunk `crc32 | length u16 | type u8 | data`)."""
    from wandb.proto import wandb_internal_pb2

    blob, pos, records, pending = path.read_bytes(), 7, [], b""
    assert blob[:4] == b":W&B"
    while pos + 7 <= len(blob):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", blob[pos : pos + 7])
        if pos + 7 + length > len(blob):  # still being written
            break
        pending += blob[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


# --- tests -----------------------------------------------------------------------------------
def test_event_file_and_jsonl(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(1, {"loss": 2.5, "lr": jnp.float32(1e-4), "acc": np.array(0.25)})
        writer.write(2, {"loss": float("nan"), "kl/mean": 0.125})
        writer.write(2**40, {"loss": -1.0})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    decoded = [decode_event(r) for r in read_records(events[0].read_bytes())]
    assert decoded[0]["file_version"] == "brain.Event:2" and decoded[0]["scalars"] == {}
    by_step: dict[int, dict] = {}  # tensorboardX writes one event per scalar
    for event in decoded[1:]:
        by_step.setdefault(event["step"], {}).update(event["scalars"])
    assert list(by_step) == [1, 2, 2**40]
    assert by_step[1] == {"loss": 2.5, "lr": pytest.approx(1e-4, rel=1e-6), "acc": 0.25}
    assert np.isnan(by_step[2]["loss"]) and by_step[2]["kl/mean"] == 0.125 and by_step[2**40] == {"loss": -1.0}
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


def test_a_record_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"loss": 3.0})
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as handle:
        handle.write('{"step": 2, "time": 1.0, "lo')  # the process died in this write
    assert [r["step"] for r in read_metrics(path)] == [1]  # readable meanwhile (e.g. by a report)
    with MetricsWriter(tmp_path, tensorboard=False) as writer:  # resumed from step 1
        writer.write(2, {"loss": 1.5})
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 3.0), (2, 1.5)]
    assert path.read_text().count("\n") == 2


def test_an_unreadable_record_in_the_middle_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(TailorError, match=r"metrics.jsonl, line 2: not a metrics record"):
        read_metrics(path)


def test_non_primary_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path / "run", is_primary=False) as writer:
        writer.write(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_non_scalar_metric_is_rejected(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        with pytest.raises(TypeError, match="'loss'"):
            writer.write(1, {"loss": np.ones(3)})


def test_wandb_offline_run_holds_the_same_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = WandbConfig(project="tailor-test", name="micro", mode="offline", tags=("ci",))
    run_dir = tmp_path / "run"
    with MetricsWriter(run_dir, wandb=cfg, config={"optimizer": {"lr": 0.001}}) as writer:
        writer.write(1, {"loss": 2.5, "eval/acc": np.float32(0.25)})
        writer.write(2, {"loss": 1.5, "kl": 0.125})
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    deadline = time.time() + 120  # W&B's service process writes the log asynchronously
    while True:
        logs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
        records = read_wandb_records(logs[0]) if len(logs) == 1 else []
        if records and records[-1].WhichOneof("record_type") == "exit":
            break
        assert time.time() < deadline, (logs, [r.WhichOneof("record_type") for r in records])
        time.sleep(0.2)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name, list(run.tags)) == ("tailor-test", "micro", ["ci"])
    assert any(item.key == "optimizer" and json.loads(item.value_json) == {"lr": 0.001} for item in run.config.update)
    history = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.append({k: v for k, v in row.items() if not k.startswith("_") or k == "_step"})
    assert history == [{"_step": 1, "loss": 2.5, "eval/acc": 0.25}, {"_step": 2, "loss": 1.5, "kl": 0.125}]
    # the same names and values as metrics.jsonl and TensorBoard
    lines = [{k: v for k, v in r.items() if k not in ("step", "time")} for r in read_metrics(run_dir / "metrics.jsonl")]
    assert lines == [{k: v for k, v in h.items() if k != "_step"} for h in history]


def test_wandb_section_without_the_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(TailorError, match=r"pip install 'tailor-jax\[wandb\]'"):
        MetricsWriter(tmp_path / "run", wandb=WandbConfig(project="p"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_wandb_section_in_the_trainer_configs(tmp_path):
    from tailor_jax.config import load_config
    from tailor_jax.train.grpo import GRPOConfig
    from tailor_jax.train.sft import SFTConfig

    base = [f"run_dir={tmp_path}", "data.train_file=train.jsonl"]
    sft = load_config(SFTConfig, None, [*base, "wandb={project: p, name: n, mode: offline}"])
    assert sft.wandb == WandbConfig(project="p", name="n", mode="offline")
    grpo = load_config(GRPOConfig, None, [f"run_dir={tmp_path}", "init=x", "wandb={project: p}"])
    assert grpo.wandb.mode == "online" and load_config(SFTConfig, None, base).wandb is None
    with pytest.raises(TailorError, match="wandb.mode"):
        load_config(SFTConfig, None, [*base, "wandb={project: p, mode: sometimes}"])


def test_progress_shows_loss_and_tokens_per_second(capsys):
    with Progress(10, initial_step=2, desc="sft") as progress:
        progress.update(3, loss=1.23456, tokens=1000)
        progress.update(5, loss=1.0, tokens=1000, lr=3e-4)
        assert progress._bar.n == 5
        postfix = progress._bar.postfix
    assert "loss=1.0000" in postfix and "tok/s=" in postfix and "lr=0.0003" in postfix
