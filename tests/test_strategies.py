"""Strategy labels of completions (`tailor_jax.primitives.classify`) and their tables in the
evaluator's result: which primitive a model's output follows, before and after RL."""

from __future__ import annotations

import re

import pytest

from tailor_jax.eval.evaluator import evaluate_records, score_outcomes, strategy_table
from tailor_jax.primitives.classify import closest_strategy, shapes, strategy_classifier, strategy_renderers, trace_text
from tailor_jax.tasks import get_task

TASKS = {"gf": {"p": 11, "steps": "2-9"}, "kk": {}, "igsm": {}}


def _records(task, n=12, seed=5):
    return list(task.generate(n, seed=seed))


def _distinct_renders(renderers, record):
    """{text: first candidate name rendering it} (GF's rule_based trace is its forward one)."""
    out = {}
    for name, render in renderers.items():
        try:
            out.setdefault(render(record), name)
        except Exception:  # noqa: BLE001 - a primitive that does not apply to the record
            pass
    return out


def _corrupt(text: str) -> str:
    """One value in the middle line changed (a wrong step a model could write)."""
    lines = text.split("\n")
    i = len(lines) // 2
    match = re.search(r"\b[a-z]{2}\b|\d+", lines[i])
    if match:
        new = "zz" if match.group().isalpha() else str(int(match.group()) + 1)
        lines[i] = lines[i][:match.start()] + new + lines[i][match.end():]
    return "\n".join(lines)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_primitive_render_is_labelled_as_itself_also_with_a_wrong_value(name):
    task = get_task(name, **TASKS[name])
    renderers = strategy_renderers(task)
    assert "rule_based" in renderers and len(renderers) > 3
    label = strategy_classifier(task)  # the evaluator's labeller: renders each record once, in turn
    labelled = 0
    for record in _records(task):
        for text, strategy in _distinct_renders(renderers, record).items():
            assert closest_strategy(record, task.target(record, text), renderers) == strategy
            assert closest_strategy(record, task.target(record, _corrupt(text)), renderers) == strategy
            assert label(record, task.target(record, _corrupt(text))) == strategy
            labelled += 1
    assert labelled >= 12 * 4


def test_a_prefix_shared_with_a_longer_strategy_goes_to_the_one_of_closest_length():
    # GF's verify_by_substitution is the short walk and then a substitution pass: a forward walk
    # on an evaluation problem is its first part, and a completion that stops there is forward
    task = get_task("gf", p=11, steps=4, kind="evaluation")
    renderers = strategy_renderers(task)
    record = _records(task, 1)[0]
    verify = renderers["verify_by_substitution"](record)
    assert verify.startswith(renderers["forward"](record))
    assert closest_strategy(record, renderers["forward"](record), renderers) == "forward"
    assert closest_strategy(record, verify, renderers) == "verify_by_substitution"


def test_unknown_text_has_no_strategy_and_the_trace_is_read_inside_think():
    task = get_task("gf", p=11, steps=3)
    renderers = strategy_renderers(task)
    record = _records(task, 1)[0]
    assert closest_strategy(record, "", renderers) is None
    assert closest_strategy(record, "<think>the answer is obvious</think><answer>ka</answer>", renderers) is None
    assert trace_text("<think>a\nb</think>\n<answer>c</answer>") == "a\nb"
    assert trace_text("<think>cut off") == "cut off" and trace_text("no tags") == "no tags"
    assert shapes("(1) ku * ku = pa\nDefine A as M; so M = 6.") == ["(_) _ * _ = _", "Define _ _ _;", "_ _ = _."]


def test_strategy_table_by_hand():
    table = strategy_table(["forward", None, "forward", "backward"], [True, False, False, True])
    assert table == {"forward": {"share": 0.5, "acc": 0.5, "count": 2},
                     "backward": {"share": 0.25, "acc": 1.0, "count": 1},
                     "other": {"share": 0.25, "acc": 0.0, "count": 1}}
    assert list(table) == ["forward", "backward", "other"]  # most common first, then by name


def test_evaluate_records_labels_greedy_and_sampled_completions():
    """A stub sampler writes forward walks greedily on even problems, backward walks on odd ones,
    and per problem 2 samples: one backward walk and one unreadable text."""
    from scripted_sampler import scripted_sampler

    task = get_task("gf", p=11, steps="3-4")
    records = _records(task, 4, seed=7)
    renderers = strategy_renderers(task)
    forward = [task.target(r, renderers["forward"](r)) for r in records]
    backward = [task.target(r, renderers["backward"](r)) for r in records]
    sampler, tokenizer = scripted_sampler(task, records, greedy=lambda i: forward[i] if i % 2 == 0 else backward[i],
                                          sampled=lambda i: [backward[i], "<think>no idea</think><answer>ka</answer>"])
    outcomes = evaluate_records(sampler, task, tokenizer, records, pass_k=2, strategy_of=strategy_classifier(task))
    assert [o["strategy"] for o in outcomes] == ["forward", "backward", "forward", "backward"]
    assert all(o["sample_strategies"] == ["backward", None] for o in outcomes)
    assert all(o["sample_correct"] == [True, False] for o in outcomes)
    result = score_outcomes(outcomes)
    assert result["strategies"] == {"backward": {"share": 0.5, "acc": 1.0, "count": 2},
                                    "forward": {"share": 0.5, "acc": 1.0, "count": 2}}
    assert result["sampled_strategies"]["other"] == {"share": 0.5, "acc": 0.0, "count": 4}
    assert sum(t["count"] for t in result["strategies_by_kind"].values() for t in t.values()) == 4
    plain = evaluate_records(sampler, task, tokenizer, records, pass_k=2)  # no labeller: no labels
    assert "strategy" not in plain[0] and "strategies" not in score_outcomes(plain)
