"""Evaluation tables and run reports: aggregation vs hand counts, Markdown tables, real PNG plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tailor_jax.eval import report as report_lib
from tailor_jax.eval.evaluate import format_table, write_result
from tailor_jax.eval.evaluator import score_outcomes
from tailor_jax.train.metrics import MetricsWriter

OUTCOMES = [
    {"level": 6, "kind": "evaluation", "correct": True, "length": 10, "pass": True},
    {"level": 6, "kind": "inversion", "correct": False, "length": 20, "pass": True},
    {"level": 7, "kind": "evaluation", "correct": False, "length": 30, "pass": False},
    {"level": 7, "kind": "evaluation", "correct": True, "length": 40, "pass": True},
    {"level": 7, "kind": "inversion", "correct": True, "length": 50, "pass": True},
]


def test_score_outcomes_matches_hand_counts():
    r = score_outcomes(OUTCOMES)
    assert r["num_problems"] == 5
    assert r["acc"] == pytest.approx(3 / 5)
    assert r["acc_by_level"] == {"6": pytest.approx(1 / 2), "7": pytest.approx(2 / 3)}
    assert r["num_by_level"] == {"6": 2, "7": 3}
    assert r["acc_by_kind"] == {"evaluation": pytest.approx(2 / 3), "inversion": pytest.approx(1 / 2)}
    assert r["acc_by_kind_level"]["evaluation"] == {"6": 1.0, "7": 0.5}
    assert r["acc_by_kind_level"]["inversion"] == {"6": 0.0, "7": 1.0}
    assert r["pass_at_k"] == pytest.approx(4 / 5)
    assert r["pass_at_k_by_level"] == {"6": 1.0, "7": pytest.approx(2 / 3)}
    assert r["mean_length"] == pytest.approx(30.0)
    assert r["mean_length_by_level"] == {"6": 15.0, "7": 40.0}


def test_strategy_tables_in_the_run_report(tmp_path):
    labelled = [{**o, "strategy": s, "sample_strategies": [s, None], "sample_correct": [o["correct"], False]}
                for o, s in zip(OUTCOMES, ["forward", "backward", None, "forward", "forward"])]
    run = tmp_path / "run"
    write_result(score_outcomes(labelled), run / "eval" / "sft.json")
    text = report_lib.write_report(run).read_text()
    # forward: 3 of 5 problems, all right; backward 1 (wrong); other 1 (wrong)
    assert "- sft: forward 60.0% (right 100.0%), backward 20.0% (right 0.0%), other 20.0% (right 0.0%)" in text
    # the 10 samples: the 5 unlabelled second samples (wrong) and problem 2 are other; forward 3 (right)
    assert "- sft: other 60.0% (right 0.0%), forward 30.0% (right 100.0%), backward 10.0% (right 0.0%)" in text


def test_the_run_report_gives_the_strategy_mix_during_grpo(tmp_path):
    run = tmp_path / "run"
    with MetricsWriter(run / "grpo", tensorboard=False) as w:
        w.write(0, {"eval/acc": 0.2, "eval/strategy/forward": 0.6, "eval/strategy/backward": 0.3, "eval/strategy/other": 0.1})
        w.write(5, {"reward": 0.5})
        w.write(10, {"eval/acc": 0.9, "eval/strategy/forward": 1.0})
    text = report_lib.write_report(run).read_text()
    assert "Strategy of those outputs (% of them): step 0: forward 60%, backward 30%, other 10% -> step 10: forward 100%." in text
    assert report_lib.strategy_shares(report_lib.load_run(run)["grpo_metrics"])[1] == (10, {"forward": 1.0})


def test_truncated_share_by_level_and_in_the_report(tmp_path):
    cut = [{**o, "truncated": i in (1, 2)} for i, o in enumerate(OUTCOMES)]  # one of level 6, one of level 7
    r = score_outcomes(cut)
    assert r["truncated"] == pytest.approx(2 / 5)
    assert r["truncated_by_level"] == {"6": 0.5, "7": pytest.approx(1 / 3)}
    assert "truncated" not in score_outcomes(OUTCOMES)  # outcomes that do not say stay silent
    run = _fake_run(tmp_path, "cut", improve=0.4, seed=0)
    write_result({**r, "max_new_tokens": 192}, run / "eval" / "sft.json")
    text = report_lib.write_report(run).read_text()
    assert ("**Cut at the generation budget:** sft 40.0% of greedy completions reached eval.max_new_tokens = 192 "
            "without an end token") in text


def test_score_outcomes_without_pass_k_or_kinds():
    plain = [{**o, "pass": None, "kind": None} for o in OUTCOMES]
    r = score_outcomes(plain)
    assert "pass_at_k" not in r and r["acc_by_kind"] == {}


def test_format_table_rows_levels_and_average():
    a = score_outcomes(OUTCOMES)
    b = score_outcomes([{**o, "correct": True} for o in OUTCOMES])
    table = format_table({"sft": a, "grpo": b}, label="k").splitlines()
    assert table[0] == "| model | k 6 | k 7 | avg |"
    assert table[2] == "| sft | 50.0 | 66.7 | 60.0 |"
    assert table[3] == "| grpo | 100.0 | 100.0 | 100.0 |"


def test_format_table_sorts_levels_numerically():
    r = {"acc": 0.5, "acc_by_level": {"10": 0.0, "9": 1.0}}
    assert format_table({"m": r}).splitlines()[0] == "| model | level 9 | level 10 | avg |"


def _fake_run(root, name: str, *, improve: float, seed: int):
    """A run directory with the files a `tailor-jax run` leaves (metrics, eval results, stats)."""
    rng = np.random.default_rng(seed)
    run = root / name
    for stage in ("data", "warm_start", "sft", "grpo", "eval"):
        (run / stage).mkdir(parents=True)
        (run / stage / "stage.json").write_text(json.dumps({"hash": "x", "status": "done", "summary": stage, "seconds": 1.5}))
    (run / "config.yaml").write_text("task: gf\ntask_options: {p: 11}\nwarm_start: {method: task_trace, strategy: mixed}\n"
                                     "eval: {levels: [6, 7]}\n")
    with MetricsWriter(run / "sft", tensorboard=False) as w:
        for step in range(10, 201, 10):
            w.write(step, {"loss": 3.0 * np.exp(-step / 60) + 0.1 + 0.02 * rng.random()})
        w.write(200, {"eval/loss": 0.2})
    with MetricsWriter(run / "grpo", tensorboard=False) as w:
        w.write(0, {"eval/acc": 0.3, "eval/acc/gf/6": 0.4, "eval/acc/gf/7": 0.2})
        for step in range(1, 21):
            w.write(step, {"reward": 0.3 + improve * step / 20 + 0.05 * rng.random(), "completions/mean_length": 80 - step})
        w.write(20, {"eval/acc": 0.3 + improve, "eval/acc/gf/6": 0.4 + improve, "eval/acc/gf/7": 0.2 + improve})
    write_result(score_outcomes(OUTCOMES), run / "eval" / "sft.json")
    better = [{**o, "correct": True} for o in OUTCOMES] if improve > 0 else OUTCOMES
    write_result(score_outcomes(better), run / "eval" / "grpo.json")
    stats = {"num_demos": 100, "primitives": {"backward": 48, "forward": 52}, "num_primitives": 2,
             "distinct_1": 0.01, "distinct_2": 0.1, "distinct_3": 0.3, "mean_words": 40.0}
    (run / "warm_start" / "stats.json").write_text(json.dumps(stats))
    return run


def _check_png(path, min_bytes: int = 8000):
    """A real image: PNG signature, decodes, plausible size, and not a blank canvas."""
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    pixels = mpimg.imread(path)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50  # lines, text, bars: many colours


def test_write_report_makes_plots_and_tables(tmp_path):
    run = _fake_run(tmp_path, "quick", improve=0.4, seed=0)
    path = report_lib.write_report(run)
    text = path.read_text()
    for name in report_lib.PLOTS:
        _check_png(run / "plots" / name)
        assert f"(plots/{name})" in text
    assert "| sft | 50.0 | 66.7 | 60.0 |" in text and "| grpo | 100.0 | 100.0 | 100.0 |" in text
    assert "GRPO vs SFT: 60.0% -> 100.0% (+40.0 points)" in text
    assert "sft (evaluation)" in text and "pass@" in text
    assert "step 0: 30.0%, step 20: 70.0%" in text
    assert "Cut at the generation budget" not in text  # no outcome was truncated
    # 20 logged reward steps: the report compares 5-step means, not two single noisy steps
    rewards = [r["reward"] for r in report_lib.load_run(run)["grpo_metrics"] if "reward" in r]
    assert len(rewards) == 20
    assert (f"Mean rollout reward, averaged over 5 logged steps (one step's reward is noisy): "
            f"steps 1-5: {np.mean(rewards[:5]):.3f} -> steps 16-20: {np.mean(rewards[-5:]):.3f}.") in text


def test_moving_average_and_window():
    values = [1.0, 3.0, 2.0, 6.0, 4.0]
    np.testing.assert_allclose(report_lib.moving_average(values, 2), [1.0, 2.0, 2.5, 4.0, 5.0])
    np.testing.assert_allclose(report_lib.moving_average(values, 3), [1.0, 2.0, 2.0, 11 / 3, 4.0])
    np.testing.assert_allclose(report_lib.moving_average(values, 1), values)
    assert [report_lib.smoothing_window(n) for n in (1, 3, 4, 20, 40, 300)] == [1, 1, 1, 5, 10, 10]


def test_few_reward_steps_are_reported_as_single_steps(tmp_path):
    run = _fake_run(tmp_path, "short", improve=0.4, seed=0)
    (run / "grpo" / "metrics.jsonl").write_text(
        '{"step": 1, "time": 0, "reward": 0.25}\n{"step": 2, "time": 0, "reward": 0.5}\n')
    text = report_lib.write_report(run).read_text()
    assert "Mean rollout reward (single steps, too few to average): step 1: 0.250 -> step 2: 0.500." in text


def test_report_names_skipped_non_finite_updates(tmp_path):
    run = _fake_run(tmp_path, "skips", improve=0.4, seed=0)
    assert "Skipped updates" not in report_lib.write_report(run).read_text()  # none logged: no line
    with (run / "sft" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 210, "time": 0, "loss": 0.1, "nonfinite/skipped_steps": 1.0}\n')
        f.write('{"step": 220, "time": 0, "loss": 0.1, "nonfinite/skipped_steps": 3.0}\n')
    text = report_lib.write_report(run).read_text()
    assert "**Skipped updates.** sft: 3 update(s) skipped for a non-finite loss or gradient norm" in text
    assert "grpo: " not in text.split("**Skipped updates.**")[1].split("\n")[0]


def test_report_of_an_unfinished_run_skips_missing_plots(tmp_path):
    run = tmp_path / "partial"
    (run / "sft").mkdir(parents=True)
    with MetricsWriter(run / "sft", tensorboard=False) as w:
        for step in (10, 20, 30):
            w.write(step, {"loss": 1.0 / step})
    text = report_lib.write_report(run).read_text()
    assert (run / "plots" / "sft_loss.png").is_file()
    assert not (run / "plots" / "grpo_reward.png").exists()
    assert "no evaluation results yet" in text


def test_comparison_overlays_runs(tmp_path):
    a = _fake_run(tmp_path, "tailor", improve=0.4, seed=1)
    b = _fake_run(tmp_path, "rule_based", improve=0.0, seed=2)
    path = report_lib.write_comparison([a, b], tmp_path / "cmp")
    text = path.read_text()
    assert "| tailor | task_trace | 60.0 | 100.0 |" in text and "| rule_based | task_trace | 60.0 | 60.0 |" in text
    for name in ("grpo_reward.png", "grpo_accuracy.png", "accuracy_by_level.png"):
        _check_png(tmp_path / "cmp" / "plots" / name)


def test_missing_run_dir_is_one_clear_error(tmp_path):
    from tailor_jax.errors import TailorError

    with pytest.raises(TailorError, match="does not exist"):
        report_lib.write_report(tmp_path / "nope")


def test_evaluate_records_scores_decoded_completions():
    """The decode -> reward path with a stub sampler: greedy right on even problems only,
    and among k=3 samples one right answer on every problem except the last."""
    from scripted_sampler import scripted_sampler

    from tailor_jax.eval.evaluator import evaluate_records
    from tailor_jax.tasks import get_task

    task = get_task("gf", p=11, steps="2-3")
    records = list(task.generate(6, seed=5))
    wrong = [task.target(r).replace(f"<answer>{task.format_answer(r['answer'])}<",
                                    f"<answer>{task.format_answer((r['answer'] + 1) % 11)}<") for r in records]
    right = [task.target(r) for r in records]
    sampler, tokenizer = scripted_sampler(
        task, records,
        greedy=lambda i: right[i] if i % 2 == 0 else wrong[i],
        sampled=lambda i: [wrong[i], right[i] if i < len(records) - 1 else wrong[i], wrong[i]],
        # greedy rows of problems 0 and 1 end without an end token (cut at max_new_tokens)
        finished=lambda i, is_greedy: not is_greedy or i > 1,
    )

    outcomes = evaluate_records(sampler, task, tokenizer, records, pass_k=3, chunk=4)
    assert [o["correct"] for o in outcomes] == [False, False, True, False, True, False]  # problem 0: right but cut
    assert [o["truncated"] for o in outcomes] == [True, True, False, False, False, False]
    assert [o["pass"] for o in outcomes] == [True, True, True, True, True, False]
    assert [o["level"] for o in outcomes] == [task.difficulty(r) for r in records]
    assert [o["kind"] for o in outcomes] == [r["kind"] for r in records]
    assert all(o["length"] > 5 for o in outcomes)
