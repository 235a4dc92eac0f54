"""The training shell (train/loop.py) with a toy trainer (a counter as its parameters, no model):
the log / eval / save cadence, exact resume with the data position, SIGTERM, the guard."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tailor_jax.config import CheckpointConfig
from tailor_jax.errors import TailorError
from tailor_jax.train.guard import NonFiniteError
from tailor_jax.train.loop import LoopConfig, StepOutput, run_loop
from tailor_jax.train.state import TrainState


def _state() -> TrainState:
    params = {"w": jnp.zeros((3,), jnp.float32)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest={}, opt_state=optax.sgd(1.0).init(params),
                      rng=jax.random.key_data(jax.random.key(0)))


class ToyTrainer:
    """Adds the data position (1, 2, 3, ...) to the parameters each step."""

    def __init__(self, nonfinite_at: int | None = None, sigterm_at: int | None = None):
        self.position, self.nonfinite_at, self.sigterm_at = 0, nonfinite_at, sigterm_at
        self.evaluated, self.restored, self.closed = [], [], False

    def step(self, state, step):
        self.position += 1
        params = {"w": state.params["w"] + self.position}
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return state.replace(step=state.step + 1, params=params), StepOutput({"w": params["w"][0]}, step != self.nonfinite_at)

    def read_metrics(self, step, metrics):
        return {"loss": float(metrics["w"])}

    def progress(self, metrics):
        return {"loss": metrics["loss"]}

    def evaluate(self, state, step):
        self.evaluated.append(step)
        return {"eval/acc": step / 10}

    def data_state(self, step):
        return {"position": self.position}

    def restore_data(self, data_state, step):
        self.restored.append((step, data_state))
        self.position = data_state["position"]

    def close(self):
        self.closed = True


def _loop(run_dir: Path, steps: int, **kwargs) -> LoopConfig:
    options = dict(stage="sft", run_dir=run_dir, steps=steps, log_every=2, eval_every=3,
                   checkpoint=CheckpointConfig(every_steps=2, async_save=False), nonfinite="stop",
                   max_consecutive_skips=3, progress=False, wandb=None, config={"toy": True})
    return LoopConfig(**{**options, **kwargs})


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _saved(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_cadence_of_logs_evaluations_and_saves(tmp_path):
    trainer = ToyTrainer()
    result = run_loop(_loop(tmp_path, 7, eval_at_start=True), trainer, _state())
    # log every 2, evaluate every 3 (with that step's training metrics), the last step both; step 0 evaluated first
    assert [(r["step"], "loss" in r, "eval/acc" in r) for r in _lines(tmp_path)] == [
        (0, False, True), (2, True, False), (3, True, True), (4, True, False), (6, True, True), (7, True, True)]
    assert trainer.evaluated == [0, 3, 6, 7] and trainer.closed
    assert [h["step"] for h in result.history] == [0, 2, 3, 4, 6, 7]
    assert result.metrics["loss"] == sum(range(1, 8)) and result.metrics["eval/acc"] == 0.7
    assert _saved(tmp_path)[-1] == 7 and set(_saved(tmp_path)) <= {2, 4, 6, 7}
    assert int(result.state.step) == 7


def test_resume_continues_from_the_checkpoint_and_its_data_position(tmp_path):
    whole = run_loop(_loop(tmp_path / "whole", 6), ToyTrainer(), _state()).state
    run_loop(_loop(tmp_path / "split", 4), ToyTrainer(), _state())
    resumed_trainer = ToyTrainer()
    resumed = run_loop(_loop(tmp_path / "split", 6), resumed_trainer, _state()).state
    assert resumed_trainer.restored == [(4, {"position": 4})]
    assert int(resumed.step) == 6
    np.testing.assert_array_equal(np.asarray(resumed.params["w"]), np.asarray(whole.params["w"]))
    # nothing left to do: the state is restored, no step runs
    done = ToyTrainer()
    again = run_loop(_loop(tmp_path / "split", 6), done, _state())
    assert int(again.state.step) == 6 and done.position == 6 and again.history == []


def test_sigterm_saves_the_current_step_and_stops(tmp_path):
    result = run_loop(_loop(tmp_path, 10), ToyTrainer(sigterm_at=3), _state())
    assert int(result.state.step) == 3 and _saved(tmp_path)[-1] == 3
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back (no crash on the next signal)


def test_a_non_finite_step_stops_before_anything_after_it_is_saved(tmp_path):
    trainer = ToyTrainer(nonfinite_at=3)
    with pytest.raises(NonFiniteError, match=r"sft step 3: .*NaN or inf"):
        run_loop(_loop(tmp_path, 10), trainer, _state())
    assert _saved(tmp_path) == [2] and trainer.closed


def test_a_second_trainer_in_the_same_run_directory_stops_before_writing(tmp_path):
    run_loop(_loop(tmp_path, 2), ToyTrainer(), _state())  # the lock is released when a run ends
    before = (tmp_path / "metrics.jsonl").read_text()

    class RelaunchedMidway(ToyTrainer):  # a second copy started while the first trains
        def step(self, state, step):
            if step == 3:
                with pytest.raises(TailorError, match=f"another process is writing {tmp_path} .*tailor-jax sft"):
                    run_loop(_loop(tmp_path, 4), ToyTrainer(), _state())
            return super().step(state, step)

    run_loop(_loop(tmp_path, 4), RelaunchedMidway(), _state())
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.startswith(before)  # the second copy wrote nothing: only the first one's steps follow
    assert [json.loads(line)["step"] for line in text[len(before):].splitlines()] == [3, 4]
