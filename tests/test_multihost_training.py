"""`tailor-jax sft` then `tailor-jax grpo` as 2 local processes x 4 virtual CPU devices (one
8-device mesh), joined by `initialize_distributed` from JAX_* environment variables: the same
command path a TPU slice takes. A run whose processes are all SIGKILLed mid-run (after a
checkpoint) and relaunched with the same command ends with bitwise the same parameters as an
uninterrupted 2-process run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from tailor_jax.config import load_config
from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.data.jsonl import write_jsonl
from tailor_jax.run import export_model
from tailor_jax.tasks import get_task
from tailor_jax.train import grpo as gt
from tailor_jax.train import sft
from tailor_jax.train.checkpoint import Checkpointer, TrainCheckpoint

from test_grpo_trainer import CONFIG as GRPO_CONFIG, base_overrides
from test_sft import _batches

ROOT = Path(__file__).resolve().parents[1]
SFT_STEPS = 6
TIMEOUT = 240  # seconds for one launch of both processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Launch:
    """`python -m tailor_jax.cli ARGS` in 2 processes (each its own process group), logs in LOG_DIR."""

    def __init__(self, args: list[str], log_dir: Path, name: str):
        port = _free_port()
        self.logs = [log_dir / f"{name}.{pid}.log" for pid in range(2)]
        self.procs = []
        for pid, log in enumerate(self.logs):
            env = {k: v for k, v in os.environ.items()
                   if k not in ("TAILOR_COORDINATOR_ADDRESS", "TAILOR_NUM_PROCESSES", "TAILOR_PROCESS_ID")}
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
                       XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
            with log.open("w") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tailor_jax.cli", *args], cwd=ROOT, env=env, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def tails(self) -> str:
        return "\n".join(f"--- {log.name}:\n" + log.read_text()[-3000:] for log in self.logs)

    def wait(self) -> None:
        """Both processes exit 0 within TIMEOUT (else both are killed and the test fails)."""
        deadline = time.time() + TIMEOUT
        try:
            for proc in self.procs:
                proc.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"a 2-process run took over {TIMEOUT} s\n{self.tails()}")
        finally:
            self.kill()
        assert [p.returncode for p in self.procs] == [0, 0], self.tails()

    def kill_when(self, ready) -> None:
        """SIGKILL both process groups as soon as `ready()` holds (mid-run: neither may have ended)."""
        deadline = time.time() + TIMEOUT
        try:
            while not ready():
                assert all(p.poll() is None for p in self.procs), f"a process ended early\n{self.tails()}"
                assert time.time() < deadline, f"no checkpoint within {TIMEOUT} s\n{self.tails()}"
                time.sleep(0.05)
        finally:
            self.kill()
        assert [p.returncode for p in self.procs] == [-signal.SIGKILL] * 2, self.tails()


def _sealed(checkpoints: Path, step: int) -> bool:
    return (checkpoints / str(step) / "tailor_manifest.json").is_file()


def _run_killed_and_relaunched(args: list[str], log_dir: Path, name: str, ready) -> None:
    Launch(args, log_dir, f"{name}-killed").kill_when(ready)
    Launch(args, log_dir, f"{name}-relaunched").wait()


def _assert_same_trained_params(checkpoints_a: Path, checkpoints_b: Path, initial, steps: int) -> None:
    """The newest checkpoints of two runs hold bitwise the same parameters, after `steps` steps,
    and differ from `initial` (the runs trained)."""
    found = []
    for checkpoints in (checkpoints_a, checkpoints_b):
        with Checkpointer(checkpoints) as checkpointer:
            restored = checkpointer.restore_latest(TrainCheckpoint(0, initial))
        assert restored.step == steps
        found.append([np.asarray(x) for x in jax.tree.leaves(restored.params)])
    a, b = found
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)  # bitwise
    assert any(not np.array_equal(x, np.asarray(y)) for x, y in zip(a, jax.tree.leaves(initial)))


def _logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_one_cluster_and_resumed(run_a: Path, run_b: Path, steps: list[int]) -> None:
    """Only process 0 of one 2-process cluster logged metrics (two separate 1-process runs would
    both log), and the relaunched run resumed from a checkpoint instead of starting over."""
    assert _logged_steps(run_a) == steps
    assert _logged_steps(run_b).count(1) == 1 and _logged_steps(run_b)[-1] == steps[-1]


def _sft_model(run_dir: Path):
    """The SFT run's model (initial parameters) and tokenizer, rebuilt in this process."""
    cfg = load_config(sft.SFTConfig, str(run_dir / "config.yaml"), [])
    tokenizer = tok_lib.load_tokenizer(run_dir / "tokenizer")
    return sft.build_model(cfg, tokenizer, None, None), tokenizer


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> Path:
    """SFT in run A (uninterrupted) and run B (both processes killed after the step-2
    checkpoint, during step 3, then relaunched), both 2 processes."""
    root = tmp_path_factory.mktemp("multihost")
    task = get_task("gf", p=11, steps="1-2")
    write_jsonl(root / "train.jsonl", task.generate(200, seed=1))
    write_jsonl(root / "test.jsonl", task.generate(20, seed=2))
    config = {
        "data": {"task": "gf", "task_options": {"p": 11, "steps": "1-2"}, "train_file": str(root / "train.jsonl"),
                 "eval_file": str(root / "test.jsonl"), "seq_len": 192},
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                  "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}},
        "optimizer": {"lr": 1e-2, "warmup_steps": 2, "schedule": "cosine"},
        "checkpoint": {"every_steps": 2, "async_save": False},
        "steps": SFT_STEPS, "batch_size": 8, "log_every": 1, "eval_batches": 2, "progress": False,
        "record_batches": True,
    }
    (root / "sft.yaml").write_text(yaml.safe_dump(config))
    args = lambda run: ["sft", str(root / "sft.yaml"), f"run_dir={root / run / 'sft'}"]  # noqa: E731
    Launch(args("A"), root, "sft-A").wait()
    b = root / "B" / "sft"
    _run_killed_and_relaunched(
        args("B"), root, "sft-B",
        lambda: _sealed(b / "checkpoints", 2) and (b / "batches.txt").is_file()
        and len((b / "batches.txt").read_text().splitlines()) >= 3)
    return root


def test_sft_two_processes_killed_and_relaunched_match_an_uninterrupted_run(sft_runs):
    model, _ = _sft_model(sft_runs / "A" / "sft")
    _assert_same_trained_params(sft_runs / "A" / "sft" / "checkpoints", sft_runs / "B" / "sft" / "checkpoints",
                                nnx.state(model, nnx.Param), SFT_STEPS)
    logged = list(range(1, SFT_STEPS + 1))  # one line per step (the last one with the eval metrics too)
    _assert_one_cluster_and_resumed(sft_runs / "A" / "sft", sft_runs / "B" / "sft", logged)
    # process 0 read the same batches (a replayed step the same data as its first try)
    assert _batches(sft_runs / "B", "sft") == _batches(sft_runs / "A", "sft")
    assert len(_batches(sft_runs / "A", "sft")) == SFT_STEPS


def test_grpo_two_processes_killed_and_relaunched_match_an_uninterrupted_run(sft_runs):
    """GRPO from each run's SFT model: A uninterrupted, B killed after its step-1 checkpoint."""
    for run in ("A", "B"):  # the SFT result as a Hugging Face directory (what `tailor-jax run` exports)
        model, tokenizer = _sft_model(sft_runs / run / "sft")
        with Checkpointer(sft_runs / run / "sft" / "checkpoints") as checkpointer:
            nnx.update(model, checkpointer.restore_latest(TrainCheckpoint(0, nnx.state(model, nnx.Param))).params)
        export_model(model, tokenizer, sft_runs / run / "sft_model")
    # beta > 0 with the k1 estimator: a non-zero gradient even when every reward of the tiny
    # model is the same (zero advantages), so the parameters do change every step.
    def args(run: str) -> list[str]:
        overrides = base_overrides(sft_runs / run / "sft_model", sft_runs / run / "grpo")
        return ["grpo", str(GRPO_CONFIG), *overrides, "loss.beta=0.1", "loss.kl=k1"]

    Launch(args("A"), sft_runs, "grpo-A").wait()
    killed = sft_runs / "B" / "grpo" / "checkpoints"
    _run_killed_and_relaunched(args("B"), sft_runs, "grpo-B", lambda: _sealed(killed, 1))

    cfg = load_config(gt.GRPOConfig, None, base_overrides(sft_runs / "A" / "sft_model", sft_runs / "A" / "grpo"))
    _assert_one_cluster_and_resumed(sft_runs / "A" / "grpo", sft_runs / "B" / "grpo", list(range(1, cfg.steps + 1)))
    model, _ = gt.load_policy(cfg, None, None)
    _assert_same_trained_params(sft_runs / "A" / "grpo" / "checkpoints", killed, nnx.state(model, nnx.Param), cfg.steps)
