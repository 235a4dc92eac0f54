"""Knights & Knaves: generator, uniqueness, rendering, trace, answer parsing, rewards, public
reader and the CLI.

The truth evaluator, the exhaustive solution count, the statement-text parser and the trace
checker below are written here, independently of tailor_jax.tasks.kk.
"""

import itertools
import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailor_jax.cli import main as cli_main
from tailor_jax.data.kk_public import read_public_kk
from tailor_jax.errors import TailorError
from tailor_jax.tasks import get_task, kk

RECORD_KEYS = {
    "task", "id", "n_people", "quiz", "names", "statements", "solution", "solution_text",
    "solution_text_format", "depth", "width", "answer",
}  # fmt: skip


# --- independent reference ------------------------------------------------------------------
def ref_value(statement, roles):
    """Truth of a statement (nested lists/tuples) under a full assignment (True = knight)."""
    op, args = statement[0], statement[1:]
    if op == "telling-truth":
        return roles[args[0]]
    if op == "lying":
        return not roles[args[0]]
    vals = [ref_value(a, roles) for a in args]
    if op == "not":
        return not vals[0]
    if op == "and":
        return all(vals)
    if op == "or":
        return any(vals)
    if op == "->":
        return (not vals[0]) or vals[1]
    if op == "<=>":
        return vals[0] == vals[1]
    raise AssertionError(f"unknown op {op}")


def ref_solutions(statements):
    n = len(statements)
    found = []
    for roles in itertools.product([False, True], repeat=n):
        if all(ref_value(s, roles) == roles[i] for i, s in enumerate(statements)):
            found.append(list(roles))
    return found


def completions(partial):
    """Every full assignment agreeing with a partial one (None = open)."""
    open_slots = [i for i, r in enumerate(partial) if r is None]
    for fill in itertools.product([False, True], repeat=len(open_slots)):
        roles = list(partial)
        for i, r in zip(open_slots, fill):
            roles[i] = r
        yield roles


def as_tuple(statement):
    if isinstance(statement, (list, tuple)) and statement and isinstance(statement[0], str):
        return tuple(as_tuple(x) for x in statement)
    return statement


def ref_parse_statement(text, names):
    """Parse statement text back into a tuple. Grammar (keywords case-insensitive):
    expr := "if" atom "then" atom | atom ("and" atom)+ | atom ("or" atom)+
          | atom "if and only if" atom | atom
    atom := "(" expr ")" | "it is not the case that" "(" expr ")" | NAME "is" ["not"] "a" ROLE"""
    tokens = re.findall(r"\(|\)|[A-Za-z]+", text)
    index = {name: i for i, name in enumerate(names)}
    pos = 0

    def peek(k=0):
        return tokens[pos + k].lower() if pos + k < len(tokens) else None

    def take(word=None):
        nonlocal pos
        tok = tokens[pos]
        assert word is None or tok.lower() == word, (word, tok, text)
        pos += 1
        return tok

    def atom():
        if peek() == "(":
            take("(")
            inner = expr()
            take(")")
            return inner
        if [peek(k) for k in range(6)] == ["it", "is", "not", "the", "case", "that"]:
            for w in ("it", "is", "not", "the", "case", "that", "("):
                take(w)
            inner = expr()
            take(")")
            return ("not", inner)
        person = index[take()]
        take("is")
        negated = peek() == "not"
        if negated:
            take("not")
        take("a")
        role = take().lower()
        assert role in ("knight", "knave")
        leaf = ("telling-truth" if role == "knight" else "lying", person)
        return ("not", leaf) if negated else leaf

    def expr():
        if peek() == "if":
            take("if")
            premise = atom()
            take("then")
            return ("->", premise, atom())
        first = atom()
        if peek() in ("and", "or"):
            op, parts = peek(), [first]
            while peek() == op:
                take(op)
                parts.append(atom())
            assert peek() not in ("and", "or", "if"), f"mixed connectives without parentheses: {text}"
            return (op, *parts)
        if peek() == "if":
            for w in ("if", "and", "only", "if"):
                take(w)
            return ("<=>", first, atom())
        return first

    result = expr()
    assert pos == len(tokens), f"trailing text in {text!r}"
    return result


def ref_solution_text(names, roles):
    clauses = [f"{n} is a {'knight' if r else 'knave'}" for n, r in zip(names, roles)]
    return clauses[0] + " and " + clauses[1] + "." if len(clauses) == 2 else ", ".join(clauses[:-1]) + ", and " + clauses[-1] + "."


def jsonl_bytes(records):
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


# --- shared fixtures (generated once per module) ---------------------------------------------
@pytest.fixture(scope="module")
def records_by_n():
    return {n: list(get_task("kk", people=n).generate(12, seed=100 + n)) for n in range(2, 9)}


@pytest.fixture(scope="module")
def deep_records():
    return list(get_task("kk", people="3-6", depth=3, width=3).generate(40, seed=7))


HAND = {
    "task": "kk",
    "id": "hand-1",
    "n_people": 3,
    "names": ["Zoey", "Noah", "Liam"],
    # Zoey: "Noah is a knave"; Noah: "Liam is a knight"; Liam: "if Zoey is a knight then Liam is a knave"
    "statements": [["lying", 1], ["telling-truth", 2], ["->", ["telling-truth", 0], ["lying", 2]]],
    "solution": [False, True, True],
    "answer": [False, True, True],
}
GOOD = "(1) Zoey is a knave\n(2) Noah is a knight\n(3) Liam is a knight"


# --- generation ------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_different_seeds_differ():
    task = get_task("kk", people="2-8")
    first = jsonl_bytes(task.generate(40, seed=3))
    again = jsonl_bytes(get_task("kk", people="2-8").generate(40, seed=3))
    other = jsonl_bytes(task.generate(40, seed=4))
    assert first == again
    assert first != other


def test_record_schema_and_text(records_by_n):
    for n, records in records_by_n.items():
        assert len({r["id"] for r in records}) == len(records)
        for r in records:
            assert set(r) == RECORD_KEYS
            assert json.loads(json.dumps(r)) == r
            assert r["task"] == "kk" and r["n_people"] == n == len(r["names"]) == len(r["statements"])
            assert len(set(r["names"])) == n and set(r["names"]) <= set(kk.NAME_POOL)
            assert r["depth"] == 2 and r["width"] == 2
            assert r["answer"] == r["solution"] and all(isinstance(x, bool) for x in r["solution"])
            assert r["solution_text"] == ref_solution_text(r["names"], r["solution"])
            lines = r["solution_text_format"].split("\n")
            assert lines == [f"({i + 1}) {nm} is a {'knight' if s else 'knave'}" for i, (nm, s) in enumerate(zip(r["names"], r["solution"]))]
            assert f"You meet {n} inhabitants: " in r["quiz"]
            assert r["quiz"].startswith("A very special island is inhabited only by knights and knaves.")
            assert r["quiz"].endswith("So who is a knight and who is a knave?")
            assert get_task("kk").difficulty(r) == n
            assert get_task("kk").question(r) == r["quiz"]


def test_every_problem_has_exactly_one_solution(records_by_n, deep_records):
    task = get_task("kk")
    for r in [rec for recs in records_by_n.values() for rec in recs] + deep_records:
        assert ref_solutions(r["statements"]) == [r["solution"]], r["id"]
        assert task.solve(r) == r["solution"]


def test_people_range_is_drawn_per_record():
    records = list(get_task("kk", people="3-5").generate(60, seed=0))
    assert {r["n_people"] for r in records} == {3, 4, 5}


def test_splits_are_disjoint_and_sampler_never_repeats():
    task = get_task("kk", people=3)
    splits = task.generate_splits(11, {"test": 40, "train": 300})
    assert [len(splits["test"]), len(splits["train"])] == [40, 300]
    keys = lambda rs: {json.dumps(r["statements"]) for r in rs}  # noqa: E731
    assert len(keys(splits["test"])) == 40 and len(keys(splits["train"])) == 300
    assert not keys(splits["test"]) & keys(splits["train"])
    # The splits are the consecutive records of one sampler.
    assert splits["test"] + splits["train"] == list(task.generate(340, 11))


def test_two_people_space_is_exhausted_then_a_clear_error():
    """Enumerate every depth-2 width-2 problem for 2 people (children ordered, distinct, no
    "I am lying" leaf): 399 are uniquely solvable. The sampler may only ever yield those, never
    twice, and must raise rather than loop when asked for more than exist."""

    def statements(speaker):
        leaves = [(k, t) for k in ("telling-truth", "lying") for t in (0, 1) if (k, t) != ("lying", speaker)]
        pairs = [(a, b) for a in leaves for b in leaves if a != b]
        return leaves + [("not", x) for x in leaves] + [(op, a, b) for op in ("and", "or", "->", "<=>") for a, b in pairs]

    unique = {p for p in itertools.product(statements(0), statements(1)) if len(ref_solutions(p)) == 1}
    assert len(unique) == 399
    produced = []
    with pytest.raises(TailorError, match="too few distinct problems"):
        for record in get_task("kk", people=2).generate(400, seed=0):
            produced.append(tuple(as_tuple(s) for s in record["statements"]))
    assert len(set(produced)) == len(produced) and set(produced) <= unique and len(produced) > 300


def test_small_space_runs_out_with_a_clear_error():
    # Two people at depth 1 each say one of 3 leaves: at most 9 problems exist, fewer unique.
    with pytest.raises(TailorError, match="too few distinct problems"):
        list(get_task("kk", people=2, depth=1).generate(20, seed=0))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"people": 1}, r"people must lie in 2\.\.8"),
        ({"people": 9}, r"people must lie in 2\.\.8"),
        ({"people": "5-3"}, r"people must lie in 2\.\.8"),
        ({"people": "many"}, r"people must be an integer or a range"),
        ({"depth": 0}, r"depth must lie in 1\.\.8"),
        ({"depth": "2.5"}, r"depth must be an integer"),
        ({"depth": True}, r"depth must be an integer"),
        ({"width": 1}, r"width must lie in 2\.\.8"),
        ({"people": 2, "width": 4}, r"width 4 needs 4 distinct clauses but 2 people give only 3"),
    ],
)
def test_bad_options_raise_one_line(options, message):
    with pytest.raises(TailorError, match=message) as info:
        get_task("kk", **options)
    assert "\n" not in str(info.value)


def test_sampler_follows_the_die():
    """Raw (unfiltered) draws: every face ~1/6, no "I am lying", no duplicate children,
    widths within [2, W], not() only around leaves, depth within the limit."""
    uniform = kk.Uniform(5)
    sampler = kk.StatementSampler(uniform, 4, depth=3, width=3)
    counts = {}
    widths = set()

    def walk(s, speaker, depth_left):
        assert depth_left >= 1
        op = s[0]
        if op in ("telling-truth", "lying"):
            assert not (op == "lying" and s[1] == speaker)
            assert 0 <= s[1] < 4
            return
        children = [as_tuple(c) for c in s[1:]]
        assert len(set(children)) == len(children)
        if op == "not":
            assert s[1][0] in ("telling-truth", "lying")
        if op in ("and", "or"):
            widths.add(len(children))
        for c in s[1:]:
            walk(c, speaker, depth_left - 1)

    draws = 6000
    for i in range(draws):
        speaker = i % 4
        s = sampler.statement(speaker, 3)
        walk(s, speaker, 3)
        top = "leaf" if s[0] in ("telling-truth", "lying") else s[0]
        counts[top] = counts.get(top, 0) + 1
    assert set(counts) == {"leaf", "not", "and", "or", "->", "<=>"}
    for face, count in counts.items():
        assert abs(count / draws - 1 / 6) < 0.025, (face, count)
    assert widths == {2, 3}


def test_truth_tables_count_solutions_like_brute_force():
    uniform = kk.Uniform(9)
    for n in (2, 3, 5, 7):
        sampler = kk.StatementSampler(uniform, n, depth=3, width=2)
        counts = set()
        for _ in range(40):
            statements = sampler.problem()
            mask = kk.consistent_assignments(statements)
            ref = ref_solutions(statements)
            assert mask.bit_count() == len(ref)
            counts.add(len(ref))
            if len(ref) == 1:
                assert kk.assignment_roles(mask.bit_length() - 1, n) == ref[0]
        assert 0 in counts and 1 in counts  # the filter sees unsolvable and unique draws


# --- text ------------------------------------------------------------------------------------
def test_rendering_round_trips_and_is_in_the_quiz(records_by_n, deep_records):
    parenthesised = 0
    for r in [rec for recs in records_by_n.values() for rec in recs] + deep_records:
        for statement in r["statements"]:
            text = kk.render_statement(kk.statement_from_json(statement, r["n_people"]), r["names"])
            assert text in r["quiz"] or text[0].upper() + text[1:] in r["quiz"]
            assert ref_parse_statement(text, r["names"]) == as_tuple(statement)
            parenthesised += "(" in text
    assert parenthesised > 10  # depth 3 needs (and gets) parentheses


def test_rendering_of_hand_written_depth_three_statements():
    names = ["Ann", "Bob", "Cy"]
    cases = {
        ("and", ("or", ("telling-truth", 0), ("lying", 1)), ("telling-truth", 2)): "(Ann is a knight or Bob is a knave) and Cy is a knight",
        ("or", ("telling-truth", 0), ("and", ("lying", 1), ("telling-truth", 2))): "Ann is a knight or (Bob is a knave and Cy is a knight)",
        ("->", ("<=>", ("telling-truth", 0), ("lying", 1)), ("not", ("lying", 2))): "if (Ann is a knight if and only if Bob is a knave) then Cy is not a knave",
        ("not", ("and", ("telling-truth", 0), ("lying", 1))): "it is not the case that (Ann is a knight and Bob is a knave)",
    }
    for statement, text in cases.items():
        assert kk.render_statement(statement, names) == text
        assert ref_parse_statement(text, names) == statement


def test_speech_templates_and_name_pool():
    assert len(set(kk.NAME_POOL)) >= 50 and all(re.fullmatch(r"[A-Z][a-z]+", n) for n in kk.NAME_POOL)
    assert len(set(kk.SPEECH_TEMPLATES)) >= 12


def check_trace(record, trace):
    """Replay an assume-and-refute trace, checking each claim by brute force."""
    names, statements, n = record["names"], record["statements"], record["n_people"]
    index = {name: i for i, name in enumerate(names)}
    roles = [None] * n
    is_knight = {"knight": True, "knave": False}

    def no_completion(prefix):
        return not any(all(ref_value(s, full) == full[i] for i, s in enumerate(statements)) for full in completions(prefix))

    lines = trace.split("\n")
    assert lines[0].startswith("Test the roles one person at a time")
    for line in lines[1:-1]:
        if m := re.fullmatch(r"Assume (\w+) is a (knight|knave)\.", line):
            k = index[m[1]]
            assert all(r is not None for r in roles[:k])
            roles[k], roles[k + 1 :] = is_knight[m[2]], [None] * (n - k - 1)
        elif m := re.fullmatch(r"(\w+)'s statement \"(.*)\" is then (true|false), (?:consistent with (\w+) being|but (\w+) is) a (knight|knave)(: contradiction)?\.", line):
            i, claimed = index[m[1]], m[3] == "true"
            assert ref_parse_statement(m[2], names) == as_tuple(statements[i])
            assert {ref_value(statements[i], full) for full in completions(roles)} == {claimed}
            assert roles[i] == is_knight[m[6]] and (m[4] or m[5]) == m[1]
            assert (claimed != roles[i]) == bool(m[7]) == bool(m[5])
        elif m := re.fullmatch(r"So (\w+) cannot be a (knight|knave)\.", line):
            k = index[m[1]]
            assert roles[k] == is_knight[m[2]] and no_completion(roles[: k + 1] + [None] * (n - k - 1))
        elif m := re.fullmatch(r"Neither role works for (\w+), so (\w+) cannot be a (knight|knave)\.", line):
            k = index[m[2]]
            assert index[m[1]] == k + 1 and roles[k] == is_knight[m[3]]
            assert no_completion(roles[: k + 1] + [None] * (n - k - 1))
        else:
            raise AssertionError(f"unrecognised trace line: {line!r}")
    assert lines[-1] == f"All {n} statements are consistent with these roles: {ref_solution_text(names, record['solution'])}"
    assert roles == record["solution"]


def test_trace_claims_are_true(records_by_n, deep_records):
    task = get_task("kk")
    for r in [rec for n in (2, 3, 4, 5, 6) for rec in records_by_n[n]] + deep_records[:20] + [HAND]:
        check_trace(r, task.solution_trace(r))


def test_hand_record_is_unique():
    assert ref_solutions(HAND["statements"]) == [HAND["solution"]]


def test_trace_mentions_a_refutation():
    trace = get_task("kk").solution_trace(HAND)
    assert "Assume Zoey is a knight." in trace and "contradiction" in trace


# --- answers and rewards ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, [False, True, True]),
        ("Zoey is a knave, Noah is a knight, and Liam is a knight.", [False, True, True]),
        ("zoey IS A KNAVE; NOAH is a Knight;\n liam   is   a\tknight", [False, True, True]),
        ("Answer: Zoey is a knave, Noah is a knight, Liam is a knight. Done!", [False, True, True]),
        ("Zoey is a knight, Noah is a knight, Liam is a knight", [True, True, True]),  # wrong but parses
        ("Zoey is a knave, Noah is a knight", None),  # missing person
        ("Zoey is a knave, Zoey is a knave, Noah is a knight, Liam is a knight", None),  # duplicate person
        ("Zoey is a knave, Zoey is a knight, Noah is a knight", None),  # duplicate replaces a missing one
        ("Zoey is a knave, Noah is a knight, Liam is a knight. Nobody else is a knave.", None),  # extra role
        ("Zoey is a knave (not a knight), Noah is a knight, Liam is a knight", None),
        ("Zoey is a knaves, Noah is a knight, Liam is a knight", None),
        ("Zoeyy is a knave, Noah is a knight, Liam is a knight", None),
        ("Zoey is knave, Noah is a knight, Liam is a knight", None),
        ("Zoey: knave, Noah: knight, Liam: knight", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_parse_answer_hand_written(text, expected):
    assert get_task("kk").parse_answer(text, HAND) == expected


def test_parse_answer_never_raises_on_bad_records():
    task = get_task("kk")
    assert task.parse_answer(GOOD, {}) is None
    assert task.parse_answer(GOOD, {"names": None}) is None
    assert task.parse_answer(GOOD, {"names": [1, 2, 3]}) is None


def test_format_answer_round_trips(records_by_n):
    task = get_task("kk")
    for r in [rec for recs in records_by_n.values() for rec in recs]:
        text = task.format_answer(r["solution"], names=r["names"])
        assert text == r["solution_text_format"]
        assert task.parse_answer(text, r) == r["solution"]
        assert task.parse_answer(r["solution_text"], r) == r["solution"]
        assert task.reward("logic_rl", r, task.target(r)) == 3.0
        assert task.reward("binary", r, task.target(r)) == 1.0
    with pytest.raises(TailorError, match="needs the names"):
        task.format_answer([True, False])


def completion(answer, think="reasoning"):
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


@pytest.mark.parametrize(
    "text, finished, logic_rl, binary",
    [
        (completion(GOOD), True, 3.0, 1.0),
        (completion(GOOD.replace("Zoey is a knave", "Zoey is a knight")), True, -0.5, 0.0),  # wrong role
        (completion("(1) Zoey is a knave\n(2) Noah is a knight"), True, -1.0, 0.0),  # missing person
        (completion(GOOD) + "<answer>" + GOOD + "</answer>", True, -3.0, 1.0),  # duplicate tags: format fails
        ("<think>reasoning</think>\n<answer>(1) Zoey is a knave\n(2) Noah", False, -3.0, 0.0),  # truncated
        (completion(GOOD), False, 3.0, 0.0),  # binary needs the completion to have ended
        ("I think \\boxed{Zoey is a knave, Noah is a knight, Liam is a knight}", True, -3.0, 1.0),
        ("<answer>" + GOOD + "</answer><think>x</think>", True, -3.0, 1.0),  # tags out of order
    ],
)
def test_rewards_hand_written(text, finished, logic_rl, binary):
    task = get_task("kk")
    assert task.reward("logic_rl", HAND, text, finished=finished) == logic_rl
    assert task.reward("binary", HAND, text, finished=finished) == binary


NEAR_MISS_TOKENS = st.sampled_from(
    ["Zoey", "Noah", "Liam", "zoey", "NOAH", "Zoeyy", " is ", " a ", "is", "a", "knight", "knave", "Knight",
     "KNAVE", "knights", "\u212anight", " ", "\n", "\t", "\u00a0", ",", ".", "(1)", "not", "<think>",
     "</think>", "<answer>", "</answer>", "\\boxed{", "}", "{", "\u00e9", "\U0001f600", "\x00"]
)  # fmt: skip
FUZZ_TEXT = st.one_of(
    st.text(),
    st.lists(st.one_of(NEAR_MISS_TOKENS, st.text(max_size=4)), max_size=60).map("".join),
    st.builds(
        lambda parts, i, j: completion(GOOD[:i] + parts + GOOD[j:]),
        st.lists(NEAR_MISS_TOKENS, max_size=4).map("".join),
        st.integers(0, len(GOOD)),
        st.integers(0, len(GOOD)),
    ),
)


@settings(max_examples=3000, deadline=None)
@given(FUZZ_TEXT, st.booleans())
def test_fuzz_parse_and_rewards_never_raise(text, finished):
    task = get_task("kk")
    parsed = task.parse_answer(text, HAND)
    assert parsed is None or (len(parsed) == 3 and all(isinstance(x, bool) for x in parsed))
    assert task.reward("logic_rl", HAND, text, finished=finished) in (3.0, -0.5, -1.0, -3.0)
    assert task.reward("binary", HAND, text, finished=finished) in (0.0, 1.0)


def test_huge_inputs_are_fast():
    task = get_task("kk")
    huge = [
        "Zoey" + " " * 2_000_000 + "is a knave",
        "Zoey is a " * 200_000,
        "Zoey is " + "a " * 500_000,
        "Zoey" * 500_000,
        ("Zoey \t\n" * 300_000) + "is a knight",
        "knight" * 300_000,
        completion("Noah is a knight Liam is a knight " + " " * 1_000_000 + "Zoey is a knave"),
    ]
    start = time.perf_counter()
    for text in huge:
        task.parse_answer(text, HAND)
        assert task.reward("logic_rl", HAND, text) in (3.0, -0.5, -1.0, -3.0)
    assert task.reward("logic_rl", HAND, huge[-1]) == 3.0
    assert time.perf_counter() - start < 10.0


# --- public K&K files ------------------------------------------------------------------------
def to_public(record, literal_string=True):
    statements = repr(tuple(as_tuple(s) for s in record["statements"])) if literal_string else record["statements"]
    return {
        "quiz": record["quiz"], "names": record["names"], "knight_knave": {}, "solution": record["solution"],
        "solution_text": record["solution_text"], "solution_text_format": record["solution_text_format"],
        "cot_head": "", "cot_repeat_steps": [], "cot_foot": "", "statements": statements, "index": 0,
    }  # fmt: skip


def test_public_reader_round_trips(tmp_path, records_by_n, deep_records):
    source = records_by_n[3][:3] + records_by_n[8][:2] + deep_records[:3]
    path = tmp_path / "people3_num100.jsonl"
    lines = [json.dumps(to_public(r, literal_string=i % 2 == 0)) for i, r in enumerate(source)]
    path.write_text("\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n")
    assert "(('" in lines[0]  # a Python-literal statement string, as in the public files
    read = list(read_public_kk(path))
    assert len(read) == len(source)
    for mine, theirs in zip(source, read):
        assert set(theirs) == RECORD_KEYS
        for key in RECORD_KEYS - {"id", "depth", "width"}:
            assert theirs[key] == mine[key], key
        assert theirs["depth"] <= mine["depth"] and 2 <= theirs["width"] <= mine["width"]
    assert read[0]["id"] == "kk-public-people3_num100-1"
    task = get_task("kk")
    assert task.reward("logic_rl", read[0], task.target(read[0])) == 3.0


def test_public_reader_depth_and_width():
    from tailor_jax.data.kk_public import convert_public_record

    public = to_public(HAND | {"quiz": "q", "solution_text": "t", "solution_text_format": "f"})
    record = convert_public_record(public, "x")
    assert (record["depth"], record["width"]) == (2, 2)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not a public K&K record"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"quiz": "q"}), "missing field 'names'"),
        ("STATEMENTS=\"__import__('os').system('touch PWNED')\"", "not a public K&K record"),
        ("STATEMENTS=\"(('lying', 1), ('telling-truth'\"", "not a public K&K record"),
        ("STATEMENTS=\"(('lying', 7), ('telling-truth', 2), ('lying', 0))\"", "person index 7 is out of range"),
        ("STATEMENTS=\"(('maybe', 1), ('telling-truth', 2), ('lying', 0))\"", "unknown statement operator 'maybe'"),
        ("STATEMENTS=\"(('lying', 1),)\"", "one statement per person"),
        ("SOLUTION=[true, true, true]", "stored solution is not the unique consistent assignment"),
        ("SOLUTION=[1, 0, 1]", "list of 3 booleans"),
        ("NAMES=[\"Zoey\", \"Zoey\", \"Liam\"]", "repeated name"),
    ],
)
def test_public_reader_rejects_malformed_lines(tmp_path, line, message):
    good = to_public(HAND | {"quiz": "q", "solution_text": "t", "solution_text_format": "f"})
    if line.startswith(("STATEMENTS=", "SOLUTION=", "NAMES=")):
        field, value = line.split("=", 1)
        good[field.lower()] = json.loads(value)
        line = json.dumps(good)
    path = tmp_path / "public.jsonl"
    path.write_text(json.dumps(to_public(HAND | {"quiz": "q", "solution_text": "t", "solution_text_format": "f"})) + "\n" + line + "\n")
    with pytest.raises(TailorError, match=re.escape(f"{path}:2:") + ".*" + re.escape(message)) as info:
        list(read_public_kk(path))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "PWNED").exists()


def test_public_reader_missing_file(tmp_path):
    with pytest.raises(TailorError, match="not found"):
        list(read_public_kk(tmp_path / "nope.jsonl"))


# --- CLI -------------------------------------------------------------------------------------
def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "kk.jsonl"
    argv = ["generate", "kk", "--num", "25", "--people", "3-5", "--depth", "3", "--seed", "2", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 25 and {r["n_people"] for r in records} <= {3, 4, 5}
    assert all(r["depth"] == 3 for r in records)
    assert records == list(get_task("kk", people="3-5", depth=3).generate(25, 2))
    assert "wrote 25 kk problems" in capsys.readouterr().out


def test_cli_bad_people_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "kk.jsonl"
    assert cli_main(["generate", "kk", "--num", "5", "--people", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "people must lie in 2..8" in err
    assert not out.exists()


def test_generation_speed_for_eight_people():
    start = time.perf_counter()
    records = list(get_task("kk", people=8).generate(300, seed=1))
    seconds = time.perf_counter() - start
    assert len(records) == 300
    assert seconds < 15.0, f"{300 / seconds:.0f} problems/s"  # ~3000/s measured; loose for a shared CI box
