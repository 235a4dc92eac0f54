"""SFT: the loss, packing equivalence, gradient accumulation, and the trainer end to end."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import nnx

from tailor_jax.config import CheckpointConfig
from tailor_jax.data.jsonl import write_jsonl
from tailor_jax.tasks import get_task
from tailor_jax.train.checkpoint import Checkpointer

from tailor_jax.data import pipeline
from tailor_jax.model import Transformer, get_preset
from tailor_jax.train import sft
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.train.state import create_train_state

from sft_toy import ToySumTask, toy_records, toy_tokenizer

TASK = ToySumTask()


@pytest.fixture(scope="module")
def tokenizer():
    return toy_tokenizer()


def tiny_model(vocab_size: int, seed: int = 0) -> Transformer:
    config = get_preset("tiny").replace(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
        num_kv_heads=1, head_dim=16,
    )
    return Transformer(config, rngs=nnx.Rngs(seed))


def test_sft_loss_matches_numpy():
    """The chunked SFT loss (chunks of 3 tokens over 2 x 5) against a NumPy log-softmax of the full logits."""
    rng = np.random.default_rng(0)
    model = tiny_model(7)
    batch = {"inputs": rng.integers(0, 7, size=(2, 5)), "targets": rng.integers(0, 7, size=(2, 5)),
             "loss_mask": rng.integers(0, 2, size=(2, 5)), "positions": np.tile(np.arange(5), (2, 1)),
             "segment_ids": np.ones((2, 5), np.int32)}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    total, (count, correct) = sft.sft_loss(params, graphdef, rest, batch, chunk_tokens=3)
    logits = np.asarray(model(batch["inputs"], batch["positions"])[0], np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    mask = batch["loss_mask"]
    np.testing.assert_allclose(float(total), -(picked * mask).sum(), rtol=1e-5)
    assert float(count) == mask.sum()
    assert float(correct) == ((logits.argmax(-1) == batch["targets"]) * mask).sum()


def test_packed_batch_equals_examples_one_by_one(tokenizer):
    records = toy_records(9, seed=11)
    config = pipeline.PipelineConfig(seq_len=64, batch_size=2, seed=0, num_epochs=1)
    packed = next(iter(pipeline.sft_dataset(records, TASK, tokenizer, config)))
    assert packed["segment_ids"].max() >= 3, "the test needs rows holding several examples"
    model = tiny_model(len(tokenizer))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss_and_grad = jax.jit(jax.value_and_grad(sft.sft_loss, has_aux=True), static_argnums=1)

    (packed_nll, (packed_count, _)), packed_grads = loss_and_grad(params, graphdef, rest, packed)
    # Reference: each example alone in a row, right-padded; segment ids all 1, so only the
    # causal mask applies (a real token never sees the padding after it).
    nll, count = 0.0, 0.0
    grads = jax.tree.map(jnp.zeros_like, params)
    n_examples = 0
    width = packed["inputs"].shape[1]
    for row in range(packed["inputs"].shape[0]):
        seg = packed["segment_ids"][row]
        for s in set(seg[seg > 0].tolist()):
            idx = np.flatnonzero(seg == s)
            single = {k: np.zeros((1, width), np.int32) for k in packed}
            for k in ("inputs", "targets", "loss_mask"):
                single[k][0, : len(idx)] = packed[k][row, idx]
            single["segment_ids"][:] = 1
            single["positions"][0] = np.arange(width)
            (e_nll, (e_count, _)), e_grads = loss_and_grad(params, graphdef, rest, single)
            nll, count = nll + e_nll, count + e_count
            grads = jax.tree.map(jnp.add, grads, e_grads)
            n_examples += 1
    assert n_examples >= 3
    np.testing.assert_allclose(float(packed_count), float(count))
    np.testing.assert_allclose(float(packed_nll), float(nll), rtol=1e-5)
    _assert_trees_close(packed_grads, grads)
    # Negative control: without segment ids the packed examples see each other.
    unsegmented = dict(packed, segment_ids=np.ones_like(packed["segment_ids"]))
    (leaky_nll, _), _ = loss_and_grad(params, graphdef, rest, unsegmented)
    assert abs(float(leaky_nll) - float(nll)) > 20 * 1e-5 * abs(float(nll))  # 20x the tolerance above


def test_gapped_positions_keep_examples_apart_and_ordered():
    # Rows of packed examples: positions restart at 0 with each example; padding is segment 0, position 0.
    rng = np.random.default_rng(0)
    rows, length = 64, 96
    positions, segments = np.zeros((rows, length), np.int32), np.zeros((rows, length), np.int32)
    for r in range(rows):
        t, seg = 0, 1
        while t < length - 8:
            n = int(rng.integers(3, 30))
            n = min(n, length - 8 - t)
            positions[r, t : t + n], segments[r, t : t + n] = np.arange(n), seg
            t, seg = t + n, seg + 1
    gaps = sft.PositionGapsConfig(prob=0.3, max_gap=3, contiguous=0.5)
    out = np.asarray(sft.gapped_positions(jnp.asarray(positions), jnp.asarray(segments), jax.random.key(1), gaps))
    assert np.array_equal(out[positions == 0], positions[positions == 0])  # starts and padding stay 0
    steps = np.diff(out, axis=1)[np.diff(positions, axis=1) == 1]  # within an example
    assert steps.min() >= 1 and steps.max() <= 1 + gaps.max_gap
    gapped_examples, examples = 0, 0
    for r in range(rows):
        for seg in range(1, segments[r].max() + 1):
            pos = out[r][segments[r] == seg]
            if len(pos) > 10:
                examples += 1
                gapped_examples += bool(np.any(np.diff(pos) > 1))
    assert 0.35 < gapped_examples / examples < 0.65  # about half the examples keep contiguous positions
    assert 0.3 * 0.5 * 0.7 < np.mean(steps > 1) < 0.3 * 0.5 * 1.3
    for off in (sft.PositionGapsConfig(prob=0.0), sft.PositionGapsConfig(prob=0.3, contiguous=1.0)):
        same = sft.gapped_positions(jnp.asarray(positions), jnp.asarray(segments), jax.random.key(1), off)
        assert np.array_equal(np.asarray(same), positions)


def test_train_step_trains_on_gapped_positions(tokenizer):
    records = toy_records(30, seed=13)
    batch = next(iter(pipeline.sft_dataset(records, TASK, tokenizer, pipeline.PipelineConfig(seq_len=48, batch_size=4, seed=0))))
    mesh = create_mesh(MeshConfig(data=1, fsdp=1), jax.devices()[:1])
    tx = optax.sgd(0.1)
    losses = {}
    for name, gaps in {"none": None, "off": sft.PositionGapsConfig(prob=0.0),
                       "on": sft.PositionGapsConfig(prob=0.5, max_gap=3, contiguous=0.0)}.items():
        graphdef, state = create_train_state(tiny_model(len(tokenizer)), tx, seed=0, mesh=mesh)
        _, metrics = jax.jit(sft.make_train_step(graphdef, tx, position_gaps=gaps))(state, batch)
        losses[name] = float(metrics["loss"])
    assert losses["off"] == losses["none"] and losses["on"] != losses["none"]


def _assert_trees_close(got_tree, want_tree, rtol=1e-5):
    """Leaf-wise equality up to float32 summation-order noise, scaled by each leaf's magnitude."""
    for got, want in zip(jax.tree.leaves(got_tree), jax.tree.leaves(want_tree), strict=True):
        got, want = np.asarray(got), np.asarray(want)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


def test_gradient_accumulation_gives_the_same_update(tokenizer):
    records = toy_records(30, seed=12)
    config = pipeline.PipelineConfig(seq_len=48, batch_size=8, seed=0, num_epochs=1)
    batch = next(iter(pipeline.sft_dataset(records, TASK, tokenizer, config)))
    mesh = create_mesh(MeshConfig(data=2, fsdp=1), jax.devices()[:2])
    tx = optax.sgd(0.5)  # not Adam: its normalisation would amplify float noise in ~0 gradients
    results = []
    for accum in (1, 2, 4):
        graphdef, state = create_train_state(tiny_model(len(tokenizer)), tx, seed=0, mesh=mesh)
        step = jax.jit(sft.make_train_step(graphdef, tx, accum_steps=accum))
        state, metrics = step(state, batch)
        results.append((state, metrics))
    (base, base_metrics), others = results[0], results[1:]
    assert int(base.step) == 1 and float(base_metrics["num_tokens"]) == batch["loss_mask"].sum()
    for state, metrics in others:
        np.testing.assert_allclose(float(metrics["loss"]), float(base_metrics["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["grad_norm"]), float(base_metrics["grad_norm"]), rtol=1e-5)
        _assert_trees_close(state.params, base.params)


# ---------------------------------------------------------------------------------------
# The trainer end to end (subprocesses: SIGKILL / SIGTERM need their own process).
WORKER = Path(__file__).with_name("sft_worker.py")
STEPS = 10


@pytest.fixture(scope="module")
def gf_run(tmp_path_factory):
    """GF data + a tiny-model config; run A (uninterrupted) done once for the module."""
    root = tmp_path_factory.mktemp("sft")
    task = get_task("gf", p=11, steps="2-3")
    write_jsonl(root / "train.jsonl", task.generate(200, seed=1))
    write_jsonl(root / "test.jsonl", task.generate(20, seed=2))
    config = {
        "run_dir": str(root / "A"),
        "data": {"task": "gf", "task_options": {"p": 11, "steps": "2-3"}, "train_file": str(root / "train.jsonl"),
                 "eval_file": str(root / "test.jsonl"), "seq_len": 256},
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                  "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}},
        "optimizer": {"lr": 1e-2, "warmup_steps": 2, "schedule": "cosine"},
        "checkpoint": {"every_steps": 3, "async_save": False},
        "position_gaps": {"prob": 0.3},  # drawn from the state's RNG, so resume must stay exact with them
        "steps": STEPS, "batch_size": 8, "log_every": 1, "eval_batches": 1, "progress": False,
        "record_batches": True,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    run = _worker(root, "A", wait=True)
    assert run.returncode == 0, run.stderr.read()
    return root


def _worker(root: Path, name: str, *overrides: str, wait: bool = False, kill_after_step: int | None = None) -> subprocess.Popen:
    kill = ["--kill-after-step", str(kill_after_step)] if kill_after_step is not None else []
    cmd = [sys.executable, str(WORKER), *kill, str(root / "config.yaml"), str(root / f"{name}.npz"),
           f"run_dir={root / name}", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        proc.wait(timeout=300)
    return proc


def _wait_for_step(root: Path, name: str, proc: subprocess.Popen, step: int) -> None:
    path = root / name / "batches.txt"
    deadline = time.time() + 240
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        assert proc.poll() is None, f"worker ended early: {proc.stderr.read()}"
        time.sleep(0.05)
    raise AssertionError(f"run {name} did not reach step {step}")


def _batches(root: Path, name: str) -> dict[int, str]:
    """step -> batch digest; a step seen twice (replayed after a resume) must match itself."""
    seen: dict[int, str] = {}
    for line in (root / name / "batches.txt").read_text().splitlines():
        step, digest = line.split()
        assert seen.setdefault(int(step), digest) == digest, f"step {step} saw different data on replay"
    return seen


def _assert_same_params(root: Path, a: str, b: str) -> None:
    with np.load(root / f"{a}.npz") as x, np.load(root / f"{b}.npz") as y:
        assert sorted(x.files) == sorted(y.files) and int(x["step"]) == int(y["step"]) == STEPS
        for key in x.files:
            assert np.array_equal(x[key], y[key]), f"{key} differs"  # bitwise


def _logged_steps(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_sigkill_and_resume_is_exact(gf_run):
    # Seeded (a failure can be replayed): a step past the first checkpoint (step 3), before the last.
    kill_after = random.Random(24).randint(4, STEPS - 1)
    killed = _worker(gf_run, "B", wait=True, kill_after_step=kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read()
    # the kill landed mid-run: step `kill_after` was logged and its checkpoint not saved
    with Checkpointer(gf_run / "B" / "checkpoints", CheckpointConfig(async_save=False)) as checkpointer:
        saved = checkpointer.latest_step()
    assert saved == 3 * ((kill_after - 1) // 3) >= 3
    before = _logged_steps(gf_run, "B")
    assert [r["step"] for r in before] == list(range(1, kill_after + 1)) and kill_after < STEPS

    resumed = _worker(gf_run, "B", wait=True)
    assert resumed.returncode == 0, resumed.stderr.read()
    rerun = _logged_steps(gf_run, "B")[len(before):]
    assert [r["step"] for r in rerun] == list(range(saved + 1, STEPS + 1)), "the rerun did not start after the checkpoint"
    assert all(r["grad_norm"] > 0 for r in before + rerun)
    _assert_same_params(gf_run, "A", "B")
    assert _batches(gf_run, "B") == _batches(gf_run, "A"), f"killed after step {kill_after}"
    assert len(_batches(gf_run, "A")) == STEPS


def test_sigterm_saves_the_current_step(gf_run):
    proc = _worker(gf_run, "C")
    _wait_for_step(gf_run, "C", proc, 5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr
    last_step = max(_batches(gf_run, "C"))
    assert last_step < STEPS
    with Checkpointer(gf_run / "C" / "checkpoints", CheckpointConfig(async_save=False)) as checkpointer:
        assert checkpointer.latest_step() == last_step  # complete (manifest checked) at the stop step
    resumed = _worker(gf_run, "C", wait=True)
    assert resumed.returncode == 0, resumed.stderr.read()
    _assert_same_params(gf_run, "A", "C")


def test_corrupted_checkpoint_is_skipped(gf_run):
    shutil.copytree(gf_run / "A", gf_run / "D")
    ckpt = gf_run / "D" / "checkpoints"
    latest = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    victim = max((p for p in (ckpt / str(latest)).rglob("*") if p.is_file() and p.name != "tailor_manifest.json"),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    proc = _worker(gf_run, "D", wait=True)
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert "corrupted" in stderr
    assert (ckpt / f"{latest}.corrupt").is_dir()  # moved aside, not deleted
    _assert_same_params(gf_run, "A", "D")  # retrained the lost steps from the previous checkpoint


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tailor_jax.cli", "sft", *args], capture_output=True, text=True, timeout=300)


def _snapshot(run_dir: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}


# In process (`cli.main`, what the command runs): a subprocess per case would spend its seconds
# importing JAX. The command itself, as a process, is checked once below.
@pytest.mark.parametrize(
    "override, message",
    [
        ("stepz=3", "unknown config key 'stepz'"),
        ("steps=ten", "config key 'steps' must be int"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("accum_steps=3", "multiple of accum_steps"),
        ("data.seq_len=1", "seq_len must be >= 2"),
        ("data.seq_len=1032", "sft: data.seq_len = 1032 positions, more than the model's max_position_embeddings (1024)"),
        ("position_gaps.prob=2", "position_gaps.prob must be in [0, 1]"),
        ("optimizer.lr=-1", "lr must be > 0"),
        ("data.train_file=/nonexistent/train.jsonl", "/nonexistent/train.jsonl not found"),
    ],
)
def test_bad_configs_give_one_clear_line(gf_run, capsys, override, message):
    from tailor_jax import cli

    before = _snapshot(gf_run / "A")
    assert cli.main(["sft", str(gf_run / "config.yaml"), f"run_dir={gf_run / 'A'}", override]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert _snapshot(gf_run / "A") == before  # nothing touched


def test_bad_config_from_the_command_line_is_one_line_with_exit_2(gf_run):
    before = _snapshot(gf_run / "A")
    result = _cli(str(gf_run / "config.yaml"), f"run_dir={gf_run / 'A'}", "batch_size=0")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "batch_size must be >= 1" in lines[0], result.stderr
    assert _snapshot(gf_run / "A") == before
