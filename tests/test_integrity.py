"""A run never loses a good model (issue #26): verified checkpoints, rotation that keeps the last
good state, the non-finite guard, and inputs checked before anything runs.

In-process checks use the toy state of test_checkpoint.py; the trainer checks run the tiny GF
SFT config of test_sft.py in subprocesses (tests/sft_worker.py, the `tailor-jax` CLI)."""

from __future__ import annotations

import errno
import json
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

from tailor_jax import run as run_lib
from tailor_jax.run import driver as run_driver
from tailor_jax.config import CheckpointConfig
from tailor_jax.data.jsonl import write_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.tasks import get_task
from tailor_jax.train import checkpoint as checkpoint_lib
from tailor_jax.train.checkpoint import MANIFEST_NAME, Checkpointer, TrainCheckpoint, abstract_like
from tailor_jax.train.guard import NonFiniteError, NonFiniteGuard
from tailor_jax.train.grpo import make_apply_fn
from tailor_jax.train.state import TrainState

from checkpoint_stub import stub_checkpoint
from test_checkpoint import (  # noqa: F401 - `uninterrupted` is a fixture (the toy run, not killed)
    SYNC, leaves_equal, load_npz, run_worker, save_steps, snapshot, toy_state, uninterrupted,
)

ROOT = Path(__file__).resolve().parents[1]
SFT_WORKER = Path(__file__).with_name("sft_worker.py")
STEPS = 10


def scribble(path: Path, seed: int = 0, size: int = 4096) -> None:
    """Overwrite `size` bytes in the middle of a file with random bytes; its size stays the same."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - size // 2)
    noise = np.random.default_rng(seed).integers(0, 256, min(size, len(data)), dtype=np.uint8).tobytes()
    data[start : start + len(noise)] = noise
    path.write_bytes(bytes(data))


def largest_shard(step_dir: Path) -> Path:
    """The largest data file of the step's parameters (what the issue's reproduction damaged)."""
    files = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no OCDBT data files under {step_dir / 'params'}"
    return max(files, key=lambda p: p.stat().st_size)


# ---------------------------------------------------------------------------------------
# Verified checkpoints.
def test_bytes_changed_in_place_are_caught_and_the_previous_step_is_used(tmp_path):
    params, opt_state = save_steps(tmp_path, [1, 2, 3])
    victim = largest_shard(tmp_path / "3")
    size = victim.stat().st_size
    scribble(victim)
    assert victim.stat().st_size == size  # a size-only manifest cannot see this
    messages = []
    with Checkpointer(tmp_path, SYNC, log=messages.append) as checkpointer:
        restored = checkpointer.restore_latest(TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state)))
    assert restored.step == 2
    assert leaves_equal(restored.params, jax.tree.map(lambda x: x + 2, params))
    assert len(messages) == 1 and "checksum" in messages[0] and "/3 " in messages[0] and "\n" not in messages[0]
    assert (tmp_path / "3.corrupt").is_dir()


def test_no_intact_checkpoint_stops_with_one_line_and_touches_nothing(tmp_path):
    params, opt_state = save_steps(tmp_path, [1, 2])
    for step in (1, 2):
        scribble(largest_shard(tmp_path / str(step)), seed=step)
    before = snapshot(tmp_path)
    with Checkpointer(tmp_path, SYNC, log=lambda m: None) as checkpointer:
        with pytest.raises(TailorError, match="no intact checkpoint") as err:
            checkpointer.restore_latest(TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state)))
    assert "step 2" in str(err.value) and "step 1" in str(err.value) and "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


def test_a_non_finite_state_is_never_saved(tmp_path):
    params, opt_state = save_steps(tmp_path, [1])
    poisoned = jax.tree.map(lambda x: x.at[0].set(jnp.nan), params)
    with Checkpointer(tmp_path, SYNC) as checkpointer:
        with pytest.raises(TailorError, match="refusing to save step 2.*NaN or inf") as err:
            checkpointer.save(TrainCheckpoint(2, poisoned, opt_state))
        assert str(tmp_path / "1") in str(err.value)
        assert checkpointer.all_steps() == [1]


@pytest.mark.parametrize("async_save", [False, True])
@pytest.mark.parametrize("fault", ["read_only_commit", "disk_full_seal"])
def test_a_failed_write_stops_with_one_line_and_keeps_the_older_checkpoint(tmp_path, monkeypatch, fault, async_save):
    """keep=1: on the old code Orbax logged the failed write of step 2 and then deleted step 1."""
    cfg = CheckpointConfig(every_steps=1, keep=1, async_save=async_save)
    params, opt_state = save_steps(tmp_path, [1], cfg=cfg)
    before = snapshot(tmp_path / "1")
    if fault == "read_only_commit":  # the rename that commits a step fails: a read-only directory
        from orbax.checkpoint._src.path import atomicity

        async def read_only(self, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(self.get()))

        monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", read_only)
    else:  # the manifest cannot be written: a full disk
        def full(step_dir):
            raise OSError(errno.ENOSPC, "No space left on device", str(step_dir))

        monkeypatch.setattr(checkpoint_lib, "write_manifest", full)
    with pytest.raises(TailorError, match="saving a checkpoint .* failed") as err:
        with Checkpointer(tmp_path, cfg, log=lambda m: None) as checkpointer:
            checkpointer.save(TrainCheckpoint(2, jax.tree.map(lambda x: x + 2, params), opt_state))
            checkpointer.wait()
    assert "\n" not in str(err.value) and "[1]" in str(err.value)
    monkeypatch.undo()
    assert snapshot(tmp_path / "1") == before
    with Checkpointer(tmp_path, SYNC, log=lambda m: None) as checkpointer:
        restored = checkpointer.restore_latest(TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state)))
    assert restored.step == 1 and leaves_equal(restored.params, jax.tree.map(lambda x: x + 1, params))


def test_sigkill_while_a_checkpoint_is_written_resumes_from_the_previous_one(tmp_path, uninterrupted):
    run_worker(tmp_path / "killed", "--sync", "--kill-sealing", "9", expect_rc=-signal.SIGKILL)
    assert (tmp_path / "killed" / "checkpoints" / "6").is_dir()  # not rotated away before 9 was sealed
    resumed = run_worker(tmp_path / "killed", "--sync", "--out", str(tmp_path / "final.npz"))
    assert "RESUMED_FROM 6" in resumed.stdout and "9" in resumed.stderr
    final = load_npz(tmp_path / "final.npz")
    assert final.keys() == uninterrupted.keys() and all(np.array_equal(final[k], uninterrupted[k]) for k in final)


def test_sigkill_while_the_first_checkpoint_is_sealed_starts_over(tmp_path, uninterrupted):
    """Found by CI: a study cell killed between Orbax's commit of its first GRPO step and the
    manifest could never resume ("no intact checkpoint"), although nothing was damaged."""
    checkpoints = tmp_path / "killed" / "checkpoints"
    run_worker(tmp_path / "killed", "--sync", "--kill-sealing", "3", expect_rc=-signal.SIGKILL)
    assert [p.name for p in checkpoints.iterdir() if p.name.isdigit()] == ["3"]
    resumed = run_worker(tmp_path / "killed", "--sync", "--out", str(tmp_path / "final.npz"))
    assert "RESUMED_FROM" not in resumed.stdout
    assert "3.unsealed" in resumed.stderr and "training from the start" in resumed.stderr
    assert (checkpoints / "3.unsealed" / "params").is_dir()  # moved aside, not deleted
    final = load_npz(tmp_path / "final.npz")
    assert final.keys() == uninterrupted.keys() and all(np.array_equal(final[k], uninterrupted[k]) for k in final)


def test_an_unsealed_step_with_damaged_older_ones_still_stops(tmp_path):
    """Starting over is only for a run whose one checkpoint never got sealed: a damaged older
    step means something else is wrong, so nothing is touched."""
    params, opt_state = save_steps(tmp_path, [1, 2])
    scribble(largest_shard(tmp_path / "1"))
    (tmp_path / "2" / MANIFEST_NAME).unlink()
    before = snapshot(tmp_path)
    with Checkpointer(tmp_path, SYNC, log=lambda m: None) as checkpointer:
        with pytest.raises(TailorError, match="no intact checkpoint.*step 2: no tailor_manifest.json.*step 1: .*checksum"):
            checkpointer.restore_latest(TrainCheckpoint(0, abstract_like(params), abstract_like(opt_state)))
    assert snapshot(tmp_path) == before


def test_a_run_directory_copied_elsewhere_resumes(tmp_path, uninterrupted):
    run_worker(tmp_path / "first", "--sync", "--kill-at", "8", expect_rc=-signal.SIGKILL)
    shutil.copytree(tmp_path / "first", tmp_path / "elsewhere" / "copy")
    shutil.rmtree(tmp_path / "first")  # nothing may point back at the old path
    resumed = run_worker(tmp_path / "elsewhere" / "copy", "--out", str(tmp_path / "final.npz"))
    assert "RESUMED_FROM 6" in resumed.stdout
    final = load_npz(tmp_path / "final.npz")
    assert final.keys() == uninterrupted.keys() and all(np.array_equal(final[k], uninterrupted[k]) for k in final)


# ---------------------------------------------------------------------------------------
# The non-finite guard.
def test_guard_stop_names_the_step_and_the_last_checkpoint():
    guard = NonFiniteGuard("sft", "stop", 3)
    for step, finite in ((1, True), (2, jnp.bool_(True)), (3, jnp.bool_(False)), (4, False)):
        guard.record(step, finite)
    with pytest.raises(NonFiniteError, match=r"sft step 3: .*NaN or inf.*\(runs/x/checkpoints/2\)"):
        guard.check(lambda: "runs/x/checkpoints/2")


def test_guard_skip_counts_and_stops_after_too_many_in_a_row():
    guard = NonFiniteGuard("grpo", "skip", 3)
    for step, finite in enumerate([False, False, True, False, False], 1):
        guard.record(step, finite)
    guard.check(lambda: "none")
    assert guard.skipped == 4 and guard.consecutive == 2 and guard.metrics() == {"nonfinite/skipped_steps": 4.0}
    guard.record(6, jnp.bool_(False))
    with pytest.raises(NonFiniteError, match="grpo step 6: 3 steps in a row"):
        guard.check(lambda: "none")


@pytest.mark.parametrize("skip", [False, True])
def test_grpo_apply_skips_a_non_finite_update_only_under_skip(skip):
    params, _ = toy_state()
    tx = optax.adam(1e-2)
    state = TrainState(step=jnp.int32(0), params=params, rest={}, opt_state=tx.init(params), rng=jnp.zeros(2, jnp.uint32))
    grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    new, norm = jax.jit(make_apply_fn(tx, skip_nonfinite=skip))(state, grads)
    assert not np.isfinite(float(norm)) and int(new.step) == 1
    assert leaves_equal(new.params, params) == skip
    assert checkpoint_lib.all_finite((new.params, new.opt_state)) == skip


@pytest.fixture(scope="module")
def gf_sft(tmp_path_factory):
    """The tiny GF SFT config of test_sft.py (checkpoints every 3 steps, keep 3) and run A,
    uninterrupted, done once for the module."""
    root = tmp_path_factory.mktemp("integrity")
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
        "steps": STEPS, "batch_size": 8, "log_every": 5, "eval_batches": 1, "progress": False,
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    run = sft_worker(root, "A")
    assert run.returncode == 0, run.stderr
    return root


def sft_worker(root: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SFT_WORKER), str(root / "config.yaml"), str(root / f"{name}.npz"),
           f"run_dir={root / name}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def sft_cli(root: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tailor_jax.cli", "sft", str(root / "config.yaml"), f"run_dir={root / name}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_sft_resumes_past_a_corrupted_shard_to_the_same_finite_weights(gf_sft):
    """The issue's reproduction: random bytes in the largest file under <step>/params/.../d/. The
    previous checkpoint is used, and the run ends with the weights of run A, which equal those of
    any exact resume from that checkpoint (test_sft.py::test_sigkill_and_resume_is_exact)."""
    shutil.copytree(gf_sft / "A", gf_sft / "B")
    checkpoints = gf_sft / "B" / "checkpoints"
    scribble(largest_shard(checkpoints / str(STEPS)))
    run = sft_worker(gf_sft, "B")
    assert run.returncode == 0, run.stderr
    assert "does not match its checksum" in run.stderr and (checkpoints / f"{STEPS}.corrupt").is_dir()
    with np.load(gf_sft / "A.npz") as a, np.load(gf_sft / "B.npz") as b:
        for key in a.files:
            assert np.isfinite(b[key]).all() and np.array_equal(a[key], b[key]), key


# The divergence: lr 1e6 with the quickstart's decoupled weight decay 0.01 (each step
# scales the weights by 1 - lr * wd: they blow up within a few steps).
DIVERGE = ("optimizer.lr=1e6", "optimizer.weight_decay=0.01", "optimizer.warmup_steps=0", "optimizer.schedule=constant")


def test_sft_divergence_stops_and_leaves_a_finite_checkpoint_that_loads(gf_sft):
    run = sft_cli(gf_sft, "diverged", *DIVERGE, "checkpoint.every_steps=1", "log_every=100")
    lines = [line for line in run.stderr.splitlines() if line.startswith("tailor-jax sft: error")]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-3000:]
    assert "NaN or inf" in lines[0] and "sft.nonfinite=skip" in lines[0]
    bad_step = int(lines[0].split("sft step ")[1].split(":")[0])
    with Checkpointer(gf_sft / "diverged" / "checkpoints", SYNC) as checkpointer:
        steps = checkpointer.all_steps()
        assert steps and max(steps) < bad_step and str(checkpointer.step_dir(max(steps))) in lines[0]
    # the newest checkpoint restores into the trainer's own state (checksums and finite values checked)
    from tailor_jax.config import load_config
    from tailor_jax.data.tokenizer import load_tokenizer
    from tailor_jax.parallel.mesh import create_mesh
    from tailor_jax.train import sft
    from tailor_jax.train.optim import make_optimizer
    from tailor_jax.train.state import create_train_state

    cfg = load_config(sft.SFTConfig, gf_sft / "config.yaml", [f"run_dir={gf_sft / 'diverged'}", *DIVERGE])
    mesh, rules = create_mesh(cfg.mesh), cfg.mesh.axis_rules()
    model = sft.build_model(cfg, load_tokenizer(gf_sft / "diverged" / "tokenizer"), mesh, rules)
    _, state = create_train_state(model, make_optimizer(cfg.optimizer, cfg.steps), cfg.seed, mesh, rules)
    with Checkpointer(gf_sft / "diverged" / "checkpoints", SYNC) as checkpointer:
        restored = checkpointer.restore_latest(TrainCheckpoint(0, state.params, state.opt_state, rng_key=state.rng))
    assert restored.step == max(steps) and checkpoint_lib.all_finite((restored.params, restored.opt_state))


def test_sft_skip_policy_counts_skipped_steps_and_stops_after_too_many(gf_sft):
    run = sft_cli(gf_sft, "skipping", *DIVERGE, "nonfinite=skip", "max_consecutive_skips=3", "log_every=1")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "3 steps in a row" in run.stderr and "skipped" in run.stderr
    logged = [json.loads(line) for line in (gf_sft / "skipping" / "metrics.jsonl").read_text().splitlines()]
    skipped = [row["nonfinite/skipped_steps"] for row in logged if "nonfinite/skipped_steps" in row]
    assert skipped and skipped == sorted(skipped) and skipped[-1] >= 1


def test_a_stopped_stage_starts_no_later_stage(tmp_path, monkeypatch):
    """`tailor-jax run`: the guard's error leaves SFT `running` (a rerun resumes it) and GRPO,
    evaluation and the report never start."""
    from test_run import micro_config

    calls = []

    def stage(name):
        def run(cfg, out):
            calls.append(name)
            if name == "sft":
                raise NonFiniteError("sft step 3: the loss or gradient norm is NaN or inf; stopped")
            return "ok"
        return run

    monkeypatch.setattr(run_driver, "STAGE_FUNCTIONS", {name: stage(name) for name in run_lib.STAGES})
    with pytest.raises(NonFiniteError):
        run_lib.execute(micro_config(tmp_path), log=lambda message: None)
    assert calls == ["data", "warm_start", "sft"]
    assert run_lib.read_stage(tmp_path / "sft")["status"] == "running"
    assert not (tmp_path / "grpo").exists() and not (tmp_path / "report.md").exists()


def test_a_stage_interrupted_and_resumed_counts_the_time_of_both_parts(tmp_path, monkeypatch):
    """A stage's recorded seconds (what the study report sums into a cell's compute) include the
    part before a SIGINT/SIGTERM stop, not only the part after the resume."""
    from test_run import micro_config

    runs = []

    def stage(name):
        def run(cfg, out):
            if name == "sft":
                runs.append(name)
                time.sleep(0.3)
                if len(runs) == 1:
                    raise run_lib.Interrupted("SFT stopped at step 5 of 10")
            return "ok"
        return run

    monkeypatch.setattr(run_driver, "STAGE_FUNCTIONS", {name: stage(name) for name in run_lib.STAGES})
    with pytest.raises(KeyboardInterrupt):
        run_lib.execute(micro_config(tmp_path), log=lambda message: None)
    assert run_lib.read_stage(tmp_path / "sft")["status"] == "running"
    run_lib.execute(micro_config(tmp_path), log=lambda message: None)
    info = run_lib.read_stage(tmp_path / "sft")
    assert info["status"] == "done" and info["seconds"] >= 0.6, info


# ---------------------------------------------------------------------------------------
# Inputs checked at plan time.
def _dry_run(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tailor_jax.cli", "run", str(config), "--dry-run", *overrides],
                          capture_output=True, text=True, timeout=300)


def test_a_mistyped_pretrained_path_fails_the_dry_run(tmp_path):
    result = _dry_run(ROOT / "configs" / "qwen2.5-0.5b-kk.yaml", f"run_dir={tmp_path / 'run'}", "pretrained=/nonexistent/ckpt")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "pretrained: /nonexistent/ckpt does not exist" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_pool_too_large_for_its_level_fails_the_dry_run(tmp_path):
    result = _dry_run(ROOT / "configs" / "kk-tiny.yaml", f"run_dir={tmp_path / 'run'}", "data.train_options.people=2-3")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "people=2" in lines[0] and "at most 399 distinct problems" in lines[0] and "data.num_train" in lines[0]


@pytest.mark.parametrize("override, knob", [("grpo.rollout.max_new_tokens=1024", "grpo.rollout.max_new_tokens"),
                                            ("sft.data.seq_len=2048", "sft.data.seq_len")])
def test_a_context_past_the_models_positions_fails_the_dry_run(tmp_path, override, knob):
    """kk-tiny's model has max_position_embeddings 1024: RoPE would run past it without a word."""
    result = _dry_run(ROOT / "configs" / "kk-tiny.yaml", f"run_dir={tmp_path / 'run'}", override)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "max_position_embeddings (1024)" in lines[0] and f"lower {knob}" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_kk_counts_match_the_generator():
    """The exact count for people=2 is what the generator can reach: it gives every one of them
    (and no more) when asked for all (the last few take more draws than its budget, so ask for
    399 minus a handful)."""
    from itertools import islice

    task = get_task("kk", people=2, depth=2, width=2)
    assert task.max_distinct(2) == 399
    assert len(list(islice(task.generate(390, seed=0), 390))) == 390
    with pytest.raises(TailorError, match="no new uniquely solvable problem"):
        list(islice(task.generate(400, seed=0), 400))
    assert get_task("kk", people=3, depth=1).max_distinct(3) == 0  # depth 1: never a unique solution


def test_gf_counts_match_the_generator_and_a_gf_pool_too_large_fails_the_plan(tmp_path):
    """One step over GF(11), one kind: 11 given values x 3 ops x 10 constants = 330 problems; the
    generator reaches every one of them and no more, and the run's plan refuses a larger pool."""
    task = get_task("gf", p=11, steps=1, kind="evaluation")
    assert task.max_distinct(1) == 330 and get_task("gf", p=11, steps=1).max_distinct(1) == 660
    assert get_task("gf", p=13, steps=2).max_distinct(2) == 2 * 13 * 36**2
    assert len({(r["given"], str(r["ops"])) for r in task.generate(330, seed=0)}) == 330
    with pytest.raises(TailorError, match="found only 330 distinct problems"):
        list(task.generate(331, seed=0))
    cfg = run_lib.load_run_config(ROOT / "configs" / "quickstart.yaml",
                                  [f"run_dir={tmp_path}", "task_options={p: 11, kind: evaluation}", "data.train_options.steps=1",
                                   "data.num_train=400"])
    with pytest.raises(TailorError, match=r"data.num_train: gf at steps=1 .*has at most 330 distinct problems"):
        run_lib.plan(cfg)


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_runs_its_data_stage(config, tmp_path):
    """The whole data stage at the config's own sizes (each takes a few seconds at most)."""
    overrides = [f"run_dir={tmp_path}"]
    if yaml.safe_load(config.read_text()).get("pretrained"):
        overrides.append(f"pretrained={stub_checkpoint(tmp_path / 'ckpt', config)}")
    cfg = run_lib.load_run_config(config, overrides)
    run_lib.plan(cfg)
    out = tmp_path / "data"
    out.mkdir()
    run_lib.run_data(cfg, out)
    assert sum(1 for _ in (out / "train.jsonl").open()) == cfg.data.num_train
