"""The evaluator's pure parts: completions with their prefill, scores per (problem, sample), the
trainers' metrics from per-problem outcomes (decode -> score with a stub sampler is
tests/test_report.py::test_evaluate_records_scores_decoded_completions)."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from tailor_jax.data.pipeline import budget_shortfall
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


def test_policy_metrics_give_the_strategy_shares_of_labelled_outcomes():
    outcomes = [{"level": 3, "kind": None, "correct": c, "length": 10, "pass": None, "strategy": s}
                for c, s in ((True, "forward"), (False, "forward"), (False, None), (True, "backward"))]
    metrics = policy_metrics(outcomes, "gf")
    assert {k: v for k, v in metrics.items() if k.startswith("eval/strategy/")} == {
        "eval/strategy/forward": 0.5, "eval/strategy/backward": 0.25, "eval/strategy/other": 0.25}


def test_policy_metrics_report_the_truncated_share():
    outcomes = [{"level": 3, "kind": None, "correct": c, "length": 10, "truncated": t, "pass": None}
                for c, t in ((True, False), (False, True), (False, True), (False, False))]
    assert policy_metrics(outcomes, "gf")["eval/truncated"] == 0.5


def test_budget_shortfall_names_the_knob_and_the_length_needed():
    assert budget_shortfall([10, 20, 30], 30, "eval.max_new_tokens") is None  # the longest fits exactly (EOS included)
    message = budget_shortfall([10, 20, 30, 31, 50], 30, "eval.max_new_tokens")
    assert message.startswith("2 of 5 demonstrations checked (40%) need more than eval.max_new_tokens=30 tokens")
    assert "longest 50" in message and message.endswith("raise eval.max_new_tokens to at least 50")


def test_demonstration_lengths_are_the_tokens_trained_on_and_short_budgets_warn():
    """completion_lengths counts what SFT trains the model to write (the loss-masked tokens, end
    token included), and the SFT trainer's start-up check warns for each budget they overflow."""
    from tailor_jax.data import pipeline
    from tailor_jax.data import tokenizer as tok_lib
    from tailor_jax.train.sft import DataConfig, SFTConfig, short_budgets

    task = get_task("gf", p=11, steps="2-3")
    records = list(task.generate(40, seed=7))
    texts = [task.prompt(r).text + task.target(r) for r in records]
    tokenizer = tok_lib.train_bpe_tokenizer(texts, 300, sorted(task.symbols.values()))
    lengths = pipeline.completion_lengths(task, tokenizer, records, "plain", False)
    trained = [int(pipeline.tokenize_example(tokenizer, task.prompt(r), task.target(r), 512)["loss_mask"].sum())
               for r in records]
    assert lengths == trained and min(lengths) > 5
    assert len(pipeline.completion_lengths(task, tokenizer, records, "plain", False, limit=10)) == 10

    class IntIndexOnly:  # what a TFDS record source (data/sources.py) allows: len and one integer index
        def __len__(self):
            return len(records)

        def __getitem__(self, index):
            if not isinstance(index, int):
                raise TypeError("one integer index")
            return records[index]

    assert pipeline.completion_lengths(task, tokenizer, IntIndexOnly(), "plain", False, limit=10) == lengths[::4]
    cfg = SFTConfig(run_dir="unused", data=DataConfig(train_file="unused"), eval_samples=4, max_new_tokens=max(lengths))
    assert short_budgets(cfg, task, tokenizer, records) == []  # every demonstration fits
    warnings = short_budgets(cfg, task, tokenizer, records, {"eval.max_new_tokens": min(lengths),
                                                             "grpo.rollout.max_new_tokens": max(lengths)})
    assert len(warnings) == 1 and "need more than eval.max_new_tokens=" in warnings[0]
    short = SFTConfig(run_dir="unused", data=DataConfig(train_file="unused"), eval_samples=4, max_new_tokens=min(lengths))
    assert "raise max_new_tokens to at least" in short_budgets(short, task, tokenizer, records)[0]
    assert short_budgets(dataclasses.replace(short, eval_samples=0), task, tokenizer, records) == []  # no decoding
