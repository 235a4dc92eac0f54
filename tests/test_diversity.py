"""Diversity and coverage metrics on hand-made sets with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from tailor_jax.errors import TailorError
from tailor_jax.primitives import all_primitives, baselines
from tailor_jax.primitives import metrics as M
from tailor_jax.primitives.pipeline import select_diverse
from tailor_jax.tasks import get_task

TASK = get_task("gf", p=11, steps="2-4")
RECORDS = list(TASK.generate(24, 5))


def test_distinct_n_known_values():
    texts = ["a b a", "a b c"]
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab, ba, ab, bc
    assert M.distinct_n(texts, 3) == pytest.approx(2 / 2)
    assert M.distinct_n(["a"], 2) == 0.0
    assert M.distinct_n(["x x x x"], 1) == pytest.approx(1 / 4)


def test_mean_pairwise_cosine_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 5))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = np.mean([1 - unit[i] @ unit[j] for i in range(9) for j in range(i + 1, 9)])
    assert M.mean_pairwise_cosine_distance(x) == pytest.approx(brute, abs=1e-12)
    assert M.mean_pairwise_cosine_distance(sp.csr_matrix(x)) == pytest.approx(brute, abs=1e-12)
    assert M.mean_pairwise_cosine_distance(np.eye(4)) == pytest.approx(1.0)  # orthogonal
    assert M.mean_pairwise_cosine_distance(np.ones((3, 2))) == pytest.approx(0.0, abs=1e-12)  # identical
    assert M.mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    assert M.mean_pairwise_cosine_distance(np.ones((1, 3))) == 0.0


def test_tfidf_char_embeddings_by_hand():
    texts = ["abab", "abc"]
    emb = M.tfidf_char_embeddings(texts, n=3).toarray()
    # grams: "aba", "bab" (doc 0); "abc" (doc 1); each df = 1 -> idf = log(3/2) + 1, tf = 1
    assert emb.shape == (2, 3)
    assert np.allclose(np.sort(emb[0])[::-1], [1 / math.sqrt(2), 1 / math.sqrt(2), 0])
    assert np.allclose(np.sort(emb[1])[::-1], [1, 0, 0])
    assert M.mean_pairwise_cosine_distance(M.tfidf_char_embeddings(texts)) == pytest.approx(1.0)
    same = M.tfidf_char_embeddings(["hello world", "hello world"])
    assert M.mean_pairwise_cosine_distance(same) == pytest.approx(0.0, abs=1e-12)


def test_step_state_masks_problem_tokens():
    record = RECORDS[0]
    sym = record["symbols"]
    assert M.step_state(record, f"{sym['3']} + {sym['4']} = {sym['7']}") == ("$ + $ = $", 7)
    assert M.step_state(record, f"{sym['1']}*x+{sym['0']} * {sym['2']} = {sym['2']}*x+{sym['0']}") == ("$ * x + $ * $ = $ * x + $", 0)
    assert M.step_state(record, f"guess y = {sym['5']}") == ("guess y = $", 5)
    kk = {"task": "kk", "names": ["Ann", "Bob"]}
    assert M.step_state(kk, "Assume Bob is a knight.") == ("Assume @ is a knight .", 1)
    assert M.step_state({"task": "igsm"}, "so p = 5 + 3 = 8") == ("so v = # + # = #", 8)
    assert M.trace_steps("a = 1; b = 2. c\nd") == ["a = 1;", "b = 2.", "c", "d"]


def _set(primitive_names, records=RECORDS):
    prims = all_primitives("gf")
    out = []
    for i, record in enumerate(records):
        name = primitive_names[i % len(primitive_names)]
        out.append(M.Example(record, TASK.target(record, prims[name].render(record)), name))
    return out


def test_coverage_is_one_for_the_whole_library_and_lower_for_one_primitive():
    names = sorted(all_primitives("gf"))
    everything = [ex for name in names for ex in _set([name])]
    full = M.compute_metrics(everything, TASK)
    assert full["reasoning_state_coverage"] == pytest.approx(1.0)
    assert full["num_primitives"] == len(names) and full["num_questions"] == len(RECORDS)
    forward_only = M.compute_metrics(_set(["forward"]), TASK)
    assert 0 < forward_only["reasoning_state_coverage"] < 1
    assert forward_only["reasoning_states_reachable"] == full["reasoning_states_reachable"]
    assert forward_only["num_primitives"] == 1


def test_compute_metrics_quality_fields():
    good = _set(["forward", "guess_and_check"])
    bad_answer = M.Example(RECORDS[0], good[0].completion.replace("<answer>", "<answer>zz"), "forward")
    result = M.compute_metrics([*good, bad_answer], TASK)
    assert result["verified_accuracy"] == pytest.approx(len(good) / (len(good) + 1))
    assert result["step_check_rate"] == pytest.approx(1.0)  # the trace itself is intact
    wrong_step = M.Example(RECORDS[1], good[1].completion.replace("guess", "gues", 1), "guess_and_check")
    assert M.compute_metrics([wrong_step], TASK)["step_check_rate"] == 0.0
    untagged = M.compute_metrics([M.Example(RECORDS[0], good[0].completion, None)], TASK)
    assert untagged["step_check_rate"] is None and untagged["num_primitives"] == 0
    assert result["mean_length_words"] == pytest.approx(np.mean([len(e.completion.split()) for e in [*good, bad_answer]]))
    assert result["embedding"] == "tfidf_char3"
    with pytest.raises(TailorError, match="empty"):
        M.compute_metrics([], TASK)


def test_examples_round_trip_through_jsonl(tmp_path):
    examples = _set(["backward", "meet_in_middle"])
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(M.example_to_json(e)) + "\n" for e in examples))
    back = M.read_examples(path)
    assert [(e.record, e.completion, e.primitive) for e in back] == [(e.record, e.completion, e.primitive) for e in examples]
    nested = M.example_from_json({"record": RECORDS[0], "completion": "c", "primitive": "p"})
    assert nested == M.Example(RECORDS[0], "c", "p")
    with pytest.raises(TailorError, match="completion"):
        M.example_from_json(dict(RECORDS[0]))
    assert M.compute_metrics(back, TASK) == M.compute_metrics(examples, TASK)


def test_baselines_have_the_budget_and_the_expected_primitives():
    rule = baselines.rule_based(TASK, RECORDS, 12)
    assert len(rule) == 12 and all(e.completion == TASK.target(e.record) for e in rule)
    star = baselines.four_star(TASK, RECORDS, 12)
    assert len(star) == 12
    tags = [all_primitives("gf")[e.primitive].tags for e in star]
    for i, behaviour in enumerate(baselines.BEHAVIOURS * 3):
        assert behaviour in tags[i]
    with pytest.raises(TailorError, match="only 24 questions"):
        baselines.rule_based(TASK, RECORDS, 25)
    with pytest.raises(TailorError, match="redistill needs a trained policy"):
        baselines.build_baseline("redistill", TASK, RECORDS, 3)


def test_select_diverse_greedy_coverage_groups_and_duplicates():
    features = [{1, 2, 3}, {1, 2, 3}, {4}, {5, 6}, {1}]
    lengths = np.ones(5)
    emb = np.eye(5)
    emb[1] = emb[0]  # item 1 duplicates item 0
    chosen, dups = select_diverse(features, lengths, emb, ["a", "b", "c", "d", "e"], 3, diversity_weight=0.0)
    assert chosen == [0, 3, 2] and dups == 1  # 1 is a near-duplicate of 0 (gain then 0 too)
    chosen, _ = select_diverse(features, lengths, np.eye(5), ["a", "a", "a", "b", "b"], 5, diversity_weight=0.0)
    assert chosen == [0, 3]  # one per group
    # a long item covering more loses to a short one per unit length
    chosen, _ = select_diverse([{1, 2, 3, 4}, {5, 6}], np.array([8.0, 1.0]), np.eye(2), ["a", "b"], 1, diversity_weight=0.0)
    assert chosen == [1]
