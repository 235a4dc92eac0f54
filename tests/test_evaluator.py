"""The evaluator's pure parts: completions with their prefill, scores per (problem, sample), the
trainers' metrics from per-problem outcomes (decode -> score with a stub sampler is
tests/test_report.py::test_evaluate_records_scores_decoded_completions)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from tailor_jax.eval.evaluator import Completions, decode_completions, policy_metrics, score_completions
from tailor_jax.tasks import get_task
from tailor_jax.tasks.prompt import THINK_OPEN


class CharTokenizer:
    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(t) for t in row if t != 0 or not skip_special_tokens) for row in rows]


def test_decode_puts_the_prefill_back_and_scores_every_sample():
    task = get_task("gf", p=11, steps=2)
    records = list(task.generate(2, seed=3))
    prompts = [task.prompt(r, think_prefill=True) for r in records]
    assert all(p.prefill == THINK_OPEN for p in prompts)
    right = [task.target(r)[len(THINK_OPEN):] for r in records]  # what a model writes after the prefill
    rows = [right[0], "nonsense", "nonsense", right[1]]  # 2 samples per prompt
    out = types.SimpleNamespace(tokens=[[ord(c) for c in row] for row in rows], finished=[True, True, True, False],
                                lengths=[len(row) for row in rows])
    done = decode_completions(CharTokenizer(), prompts, out, 2)
    assert done.decoded == rows and done.texts[0] == task.target(records[0])
    scores = score_completions(task, records, done)
    # row 3 is right but cut at max_new_tokens (not finished): binary gives 0
    np.testing.assert_array_equal(scores, [[1.0, 0.0], [0.0, 0.0]])
    both = Completions.concat([done, done])
    assert both.texts == done.texts * 2 and both.finished == done.finished * 2
    with pytest.raises(ValueError):
        Completions.concat([done, Completions([""], ["x"], [True], [1], 1)])


def test_policy_metrics_by_hand():
    outcomes = [
        {"level": 3, "kind": None, "correct": True, "length": 10, "pass": True},
        {"level": 3, "kind": None, "correct": False, "length": 20, "pass": True},
        {"level": 5, "kind": None, "correct": False, "length": 30, "pass": False},
        {"level": 5, "kind": None, "correct": False, "length": 60, "pass": True},
    ]
    assert policy_metrics(outcomes, "gf") == {"eval/acc/gf/3": 0.5, "eval/acc/gf/5": 0.0, "eval/acc": 0.25,
                                              "eval/mean_length": 30.0}
    with_k = policy_metrics(outcomes, "gf", pass_k=4)
    assert with_k["eval/pass@4/gf/3"] == 1.0 and with_k["eval/pass@4/gf/5"] == 0.5
    assert list(policy_metrics(outcomes[::-1], "gf")) == ["eval/acc/gf/3", "eval/acc/gf/5", "eval/acc", "eval/mean_length"]
