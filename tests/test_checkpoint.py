"""Checkpoints: bitwise round trip, sharded restore, keep-N/best-N, exact resume after SIGKILL,
save-on-SIGTERM, corrupted-checkpoint fallback, failed restores leave files untouched."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from tailor_jax.config import CheckpointConfig
from tailor_jax.errors import TailorError
from tailor_jax.train.checkpoint import (
    MANIFEST_NAME,
    Checkpointer,
    TrainCheckpoint,
    abstract_like,
)
from tailor_jax.train.preemption import install_preemption_handler

WORKER = Path(__file__).with_name("ckpt_worker.py")
SYNC = CheckpointConfig(every_steps=1, keep=10, async_save=False)


class Toy(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.RMSNorm(8, rngs=rngs)


def toy_state(seed=0):
    params = nnx.state(Toy(nnx.Rngs(seed)), nnx.Param)
    opt_state = optax.adamw(1e-3).init(params)
    # make the optimizer moments non-trivial
    grads = jax.tree.map(lambda p: jnp.cos(p * 3.0), params)
    _, opt_state = optax.adamw(1e-3).update(grads, opt_state, params)
    return params, opt_state


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
    )


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def save_steps(directory, steps, cfg=SYNC, **kwargs):
    params, opt_state = toy_state()
    with Checkpointer(directory, cfg, **kwargs) as checkpointer:
        for step in steps:
            shifted = jax.tree.map(lambda x: x + step, params)
            checkpointer.save(TrainCheckpoint(step, shifted, opt_state, jax.random.key(step), {"pos": step}))
    return params, opt_state


def test_roundtrip_bitwise_with_rng_data_and_config(tmp_path):
    params, opt_state = toy_state()
    key = jax.random.fold_in(jax.random.key(7), 3)
    raw_key = jax.random.PRNGKey(5)
    saved = TrainCheckpoint(4, params, opt_state, key, {"position": 123, "epoch": 1}, {"lr": 1e-3})
    with Checkpointer(tmp_path, CheckpointConfig(async_save=True)) as checkpointer:
        assert checkpointer.save(saved)
        assert checkpointer.save(TrainCheckpoint(5, params, None, raw_key))
        assert not checkpointer.save(saved), "an existing step is not written again"
        checkpointer.wait()
        restored = checkpointer.restore(TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state)), step=4)
        assert checkpointer.latest_step() == 5
        params_only = checkpointer.restore(TrainCheckpoint(0, abstract_like(params)))
    assert restored.step == 4
    assert leaves_equal(restored.params, params) and leaves_equal(restored.opt_state, opt_state)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(opt_state)
    assert np.array_equal(jax.random.key_data(restored.rng_key), jax.random.key_data(key))
    assert str(jax.random.key_impl(restored.rng_key)) == str(jax.random.key_impl(key))
    assert restored.data_state == {"position": 123, "epoch": 1} and restored.config == {"lr": 1e-3}
    assert params_only.step == 5 and params_only.opt_state is None and params_only.data_state is None
    assert params_only.rng_key.dtype == jnp.uint32 and np.array_equal(params_only.rng_key, raw_key)


def test_relative_directory_saves_and_restores(tmp_path, monkeypatch):
    # `tailor-jax run configs/quickstart.yaml` checkpoints under the relative runs/quickstart.
    monkeypatch.chdir(tmp_path)
    params, opt_state = toy_state()
    with Checkpointer("runs/x/checkpoints", CheckpointConfig(async_save=True)) as checkpointer:
        assert checkpointer.save(TrainCheckpoint(3, params, opt_state))
        checkpointer.wait()
        restored = checkpointer.restore(TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state)))
    assert restored.step == 3 and leaves_equal(restored.params, params)
    assert (tmp_path / "runs/x/checkpoints/3").is_dir()


def test_restore_places_arrays_with_target_shardings(tmp_path):
    params, opt_state = toy_state()
    with Checkpointer(tmp_path, SYNC) as checkpointer:
        checkpointer.save(TrainCheckpoint(1, params, opt_state))
        mesh = jax.make_mesh((8,), ("fsdp",))
        abstract = nnx.eval_shape(lambda: nnx.state(Toy(nnx.Rngs(0)), nnx.Param))
        spec = lambda x: P(None, "fsdp") if x.shape == (4, 8) else P()  # noqa: E731
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec(x))), abstract
        )
        restored = checkpointer.restore(TrainCheckpoint(0, target))
    kernel = restored.params["dense"]["kernel"][...]
    assert kernel.sharding == NamedSharding(mesh, P(None, "fsdp"))
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (4, 1)
    assert leaves_equal(restored.params, params)


def test_keep_latest_and_best(tmp_path):
    cfg = CheckpointConfig(every_steps=1, keep=2, keep_best=1, best_metric="loss", best_mode="min", async_save=False)
    params, _ = toy_state()
    losses = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.7, 5: 0.8}
    with Checkpointer(tmp_path, cfg) as checkpointer:
        for step, loss in losses.items():
            checkpointer.save(TrainCheckpoint(step, params), metrics={"loss": loss})
        assert sorted(checkpointer.all_steps()) == [2, 4, 5]  # latest two + best one
        assert checkpointer.best_step() == 2
        with pytest.raises(TailorError, match="best_metric 'loss'"):
            checkpointer.save(TrainCheckpoint(6, params), metrics={"acc": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "4", "5"]


def test_should_save_every_steps(tmp_path):
    with Checkpointer(tmp_path, CheckpointConfig(every_steps=3)) as checkpointer:
        assert [s for s in range(1, 10) if checkpointer.should_save(s)] == [3, 6, 9]


@pytest.mark.parametrize("damage", ["truncate", "delete", "no_manifest"])
def test_corrupted_latest_is_skipped_with_message(tmp_path, damage):
    params, opt_state = save_steps(tmp_path, [1, 2, 3])
    step3 = tmp_path / "3"
    data_files = sorted(p for p in (step3 / "params").rglob("*") if p.is_file() and p.stat().st_size > 8)
    if damage == "truncate":
        victim = max(data_files, key=lambda p: p.stat().st_size)
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "delete":
        data_files[0].unlink()
    else:
        (step3 / MANIFEST_NAME).unlink()
    before = snapshot(step3)
    messages = []
    with Checkpointer(tmp_path, SYNC, log=messages.append) as checkpointer:
        assert checkpointer.latest_step() == 2  # read-only query: nothing moved yet
        assert step3.exists()
        restored = checkpointer.restore_latest(TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state)))
    assert restored.step == 2 and restored.data_state == {"pos": 2}
    assert leaves_equal(restored.params, jax.tree.map(lambda x: x + 2, params))
    assert len(messages) == 1 and "3" in messages[0] and "corrupted" in messages[0] and "\n" not in messages[0]
    assert not step3.exists() and snapshot(tmp_path / "3.corrupt") == before, "set aside intact, never deleted"


def test_partial_save_is_reported_and_ignored(tmp_path):
    save_steps(tmp_path, [1])
    partial = tmp_path / "2.orbax-checkpoint-tmp"
    (partial / "params").mkdir(parents=True)
    (partial / "params" / "junk").write_bytes(b"x")
    messages = []
    with Checkpointer(tmp_path, SYNC, log=messages.append) as checkpointer:
        assert checkpointer.latest_step() == 1
    assert len(messages) == 1 and "partially written" in messages[0]
    assert (partial / "params" / "junk").exists()


def test_failed_restore_leaves_files_untouched(tmp_path):
    params, opt_state = save_steps(tmp_path, [1, 2])
    before = snapshot(tmp_path)
    wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] + 1,) + x.shape[1:], x.dtype), params)
    with Checkpointer(tmp_path, SYNC, log=lambda m: None) as checkpointer:
        with pytest.raises(TailorError, match="does not fit") as err:
            checkpointer.restore_latest(TrainCheckpoint(0, wrong, abstract_like(opt_state)))
        assert "\n" not in str(err.value)
        with pytest.raises(TailorError, match="no checkpoint for step 7"):
            checkpointer.restore(TrainCheckpoint(0, abstract_like(params)), step=7)
    assert snapshot(tmp_path) == before
    with pytest.raises(TailorError, match="no complete checkpoint"):
        with Checkpointer(tmp_path / "empty", SYNC) as checkpointer:
            checkpointer.restore(TrainCheckpoint(0, abstract_like(params)))


def test_preemption_handler_sets_flag_and_uninstalls():
    messages = []
    previous = signal.getsignal(signal.SIGTERM)
    flag = install_preemption_handler(log=messages.append)
    try:
        assert not flag.requested and not flag.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested and flag.reached(1) and flag.signal_name == "SIGTERM"
        assert messages and "SIGTERM" in messages[0]
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGTERM) is previous


# --- subprocess runs: exact resume ----------------------------------------------------------
def run_worker(run_dir, *extra, expect_rc=0):
    env = dict(os.environ, PYTHONPATH=str(WORKER.parent.parent), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(run_dir), "--steps", "14", "--every", "3", *extra],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == expect_rc, proc.stderr[-2000:]
    return proc


def load_npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_worker(run_dir, "--out", str(run_dir / "final.npz"))
    return load_npz(run_dir / "final.npz")


def test_resume_after_sigkill_is_bitwise_identical(tmp_path, uninterrupted):
    # A step >= 7, drawn with a fixed seed (a failure can be replayed): the save of step 6 has
    # started, so (Orbax waits for the previous save first) step 3 is complete; the kill may land
    # in the middle of an asynchronous save.
    kill_at = random.Random(24).randint(7, 13)
    run_worker(tmp_path, "--kill-at", str(kill_at), expect_rc=-signal.SIGKILL)
    resumed = run_worker(tmp_path, "--out", str(tmp_path / "final.npz"))
    resumed_from = int(resumed.stdout.split("RESUMED_FROM ")[1].split()[0])
    assert resumed_from in (3, 6, 9, 12) and resumed_from <= kill_at, (kill_at, resumed.stdout)
    final = load_npz(tmp_path / "final.npz")
    assert final.keys() == uninterrupted.keys()
    for name in final:
        assert np.array_equal(final[name], uninterrupted[name]), (kill_at, name)


def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path, uninterrupted):
    stopped = run_worker(tmp_path, "--term-at", "8")  # 8 is not a multiple of --every 3
    assert "STOPPED_AT 8" in stopped.stdout and "SIGTERM" in stopped.stderr
    with Checkpointer(tmp_path / "checkpoints", SYNC) as checkpointer:
        assert checkpointer.latest_step() == 8
    resumed = run_worker(tmp_path, "--out", str(tmp_path / "final.npz"))
    assert "RESUMED_FROM 8" in resumed.stdout
    final = load_npz(tmp_path / "final.npz")
    assert all(np.array_equal(final[name], uninterrupted[name]) for name in final)
