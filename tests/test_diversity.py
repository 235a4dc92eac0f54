"""Diversity and coverage metrics on hand-made sets with known answers."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

from tailor_jax.errors import TailorError
from tailor_jax.primitives import all_primitives
from tailor_jax.tailor import baselines
from tailor_jax.tailor import metrics as M
from tailor_jax.tailor.selection import NGRAM_ORDERS, Item, Weights, apportion, describe, select_diverse
from tailor_jax.tasks import get_task, problem_key

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


def _item(grams: str, states=(), group="q", level=0, label="p") -> Item:
    """An Item from a text (its word n-grams) and hand-made states."""
    tokens = grams.split()
    return Item(
        tuple(frozenset(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)) for n in NGRAM_ORDERS),
        tuple(max(len(tokens) - n + 1, 0) for n in NGRAM_ORDERS), frozenset(states), group, level, label,
    )


def test_apportion_splits_in_proportion_with_largest_remainders():
    assert apportion({"a": 3, "b": 1}, 4) == {"a": 3, "b": 1}
    assert apportion({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # ties to the first key
    assert apportion({2: 5, 3: 4, 4: 1}, 7) == {2: 3, 3: 3, 4: 1}  # 3.5, 2.8, 0.7: the two largest remainders get one
    assert sum(apportion({k: k for k in range(1, 9)}, 100).values()) == 100
    with pytest.raises(TailorError, match="apportion"):
        apportion({}, 3)


def _brute_force_objective(chosen: list[int], texts, states, labels, embeddings, primitive_term="count") -> float:
    """F of the module docstring from the metric functions themselves."""
    picked = [texts[j] for j in chosen]
    value = np.mean([math.log(M.distinct_n(picked, n)) for n in NGRAM_ORDERS])
    value += math.log(len(set().union(*(states[j] for j in chosen))))
    if len(chosen) >= 2:
        value += math.log(M.mean_pairwise_cosine_distance(embeddings[chosen]))
    if primitive_term == "entropy":
        shares = np.array(list(Counter(labels[j] for j in chosen).values())) / len(chosen)
        return value - float((shares * np.log(shares)).sum())
    return value + math.log(len({labels[j] for j in chosen}))


# entropy: 12 picks from 12 questions, so that the mix (8 primitives) must repeat some and the
# picks differ from the count term's (at 8 picks both take one of each primitive)
@pytest.mark.parametrize("primitive_term,questions,budget", [("count", 10, 8), ("entropy", 12, 12)])
def test_select_diverse_is_the_greedy_maximiser_of_the_metrics_product(primitive_term, questions, budget):
    """Every pick has the highest F(S + i) over the allowed items, F computed from scratch with
    `distinct_n`, the reached states, `mean_pairwise_cosine_distance` and the primitive mix (no
    bookkeeping)."""
    prims = all_primitives("gf")
    pool, seen = [], set()
    for record in RECORDS[:questions]:
        for name, primitive in prims.items():
            completion = TASK.target(record, primitive.render(record))
            if (record["id"], completion) not in seen:  # curate drops exact duplicates first
                seen.add((record["id"], completion))
                pool.append((record, completion, name))
    reachable = {problem_key(r): frozenset(M.reachable_states("gf", [r])) for r in RECORDS[:questions]}
    items = [describe(r, c, name, 0, reachable[problem_key(r)]) for r, c, name in pool]
    texts = [c for _, c, _ in pool]
    embeddings = M.tfidf_char_embeddings(texts).toarray()
    chosen, duplicates = select_diverse(items, embeddings, budget, dedup_threshold=1.01,
                                        weights=Weights(primitive_term=primitive_term))
    assert len(chosen) == budget and duplicates == 0
    assert len({items[i].group for i in chosen}) == budget  # one per question
    labels = [item.label for item in items]
    for step in range(len(chosen)):
        done = chosen[:step]
        allowed = [j for j in range(len(items)) if items[j].group not in {items[k].group for k in done}]
        values = {j: _brute_force_objective(done + [j], texts, [it.states for it in items], labels, embeddings, primitive_term)
                  for j in allowed}
        assert values[chosen[step]] == pytest.approx(max(values.values()), abs=1e-9), step
    assert len({labels[i] for i in chosen}) == 8  # every primitive represented


def test_select_diverse_constraints_groups_levels_and_near_duplicates():
    items = [
        _item("a b c", {1}, "q1", 2, "x"), _item("a b c", {1}, "q2", 2, "x"),  # same text: near-duplicates
        _item("d e f", {2}, "q3", 2, "y"), _item("g h i", {3}, "q3", 2, "z"),  # one question
        _item("j k l m", {4}, "q4", 3, "x"), _item("n o", {5}, "q5", 3, "y"),
    ]
    emb = np.eye(6)
    emb[1] = emb[0]
    chosen, duplicates = select_diverse(items, emb, 4)
    assert duplicates == 1 and 1 not in chosen  # item 1 duplicates item 0 (or the reverse)
    assert len({items[i].group for i in chosen}) == len(chosen)
    # levels: questions q1..q3 at 2, q4..q5 at 3 -> a budget of 2 takes one of each level
    picked = select_diverse(items, np.eye(6), 2)[0]
    assert sorted(items[i].level for i in picked) == [2, 3]
    # a level that runs out leaves its share to the others: level 3 has 2 questions, share 3 of 5
    lopsided = [_item(f"w{k} v{k}", {k}, f"g{k}", 2 if k < 2 else 3) for k in range(5)]
    assert len(select_diverse(lopsided, np.eye(5), 5)[0]) == 5
    # at most max_per_group items per question
    assert len(select_diverse(items, np.eye(6), 6, max_per_group=2)[0]) == 6
    with pytest.raises(TailorError, match="embeddings"):
        select_diverse(items, np.eye(5), 2)


def test_selection_prefers_novel_ngrams_states_and_new_primitives():
    items = [_item("a b c d", {1}, "q1"), _item("e f g h", {1}, "q2"), _item("a b c d", {2, 3}, "q3")]
    emb = np.eye(3)
    assert select_diverse(items, emb, 2, weights=Weights(coverage=0.0))[0] == [0, 1]  # new words
    assert select_diverse(items, emb, 2, weights=Weights(distinct=0.0))[0] == [2, 0]  # more states first
    assert select_diverse(items, emb, 2)[0] == [2, 1]  # states first, then new words with a new state
    labelled = [_item("a b c d", {1}, "q1", label="x"), _item("e f g h", {1}, "q2", label="x"),
                _item("a f g i", {1}, "q3", label="y")]
    assert select_diverse(labelled, emb, 2)[0] == [0, 2]  # a new primitive beats one more new word


def test_the_entropy_term_evens_the_primitive_mix_where_the_count_term_takes_one_item():
    # every question has a "walk" of fresh words and a "loop" that shares a word with every other
    # loop: distinct-n prefers walks. log num_primitives gains from a loop's first item only; the
    # entropy of the mix keeps rewarding loops while they are the fewer
    items = []
    for q in range(12):
        items += [_item(f"w{q}a w{q}b w{q}c w{q}d", (), f"q{q}", label="walk"), _item(f"g x{q} y{q} z{q}", (), f"q{q}", label="loop")]
    emb = np.eye(len(items))
    mix = {term: Counter(items[i].label for i in select_diverse(items, emb, 12, weights=Weights(coverage=0.0, embedding=0.0,
                                                                                             primitive_term=term))[0])
           for term in ("count", "entropy")}
    assert mix["count"] == {"walk": 11, "loop": 1}
    assert mix["entropy"] == {"walk": 6, "loop": 6}
    with pytest.raises(TailorError, match="primitive_term"):
        Weights(primitive_term="balanced")

