"""iGSM: exact op control, a step-by-step solution verifier, problem text vs graph, template
split, parsing, rewards and the CLI.

The graph semantics (dependencies, values, op count), the solution checker, the problem-text
parser and the template sketch are re-implemented here from the task description, not
imported from tailor_jax.tasks.igsm.
"""

import collections
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailor_jax.cli import main as cli_main
from tailor_jax.errors import TailorError
from tailor_jax.tasks import get_task
from tailor_jax.tasks import igsm

P = 23
RECORD_KEYS = {"task", "id", "op", "problem", "question", "solution", "answer", "graph", "split"}
SAMPLE_OPS = {"med": (1, 2, 3, 4, 6, 9, 12, 15), "hard": (16, 19, 21)}


# --- independent model of a record's graph ---------------------------------------------------
class GraphModel:
    """Dependencies, values and op count of every parameter, from the JSON graph alone."""

    def __init__(self, graph):
        self.categories = graph["categories"]
        self.layer_of = {item: i for i, layer in enumerate(graph["layers"]) for item in layer}
        self.children = collections.defaultdict(list)
        for x, y in graph["edges"]:
            assert self.layer_of[y] == self.layer_of[x] + 1, "edge between non-adjacent layers"
            self.children[x].append(y)
        self.defs = {("instance", d["item"], d["of"]): d for d in graph["params"]}
        assert set(self.defs) == {("instance", x, y) for x, y in graph["edges"]}, "one parameter per edge"
        self.question = tuple(graph["question"])
        self._values = {}

    def reaches(self, item, level):
        return self.layer_of[item] == level or any(self.reaches(c, level) for c in self.children[item])

    def deps(self, ref):
        kind, item, other = ref
        if kind == "instance":
            return [tuple(p) for p in self.defs[ref]["parents"]]
        level = self.categories.index(other)
        out = []
        for c in self.children[item]:
            if self.reaches(c, level):
                out.append(("instance", item, c))
                if self.layer_of[c] != level:
                    out.append(("abstract", c, other))
        return out

    def uses_constant(self, ref):
        return ref[0] == "instance" and self.defs[ref]["const"] is not None

    def in_degree(self, ref):
        return len(self.deps(ref)) + self.uses_constant(ref)

    def value(self, ref):
        if ref not in self._values:
            kind, item, other = ref
            if kind == "instance":
                d = self.defs[ref]
                args = [self.value(p) for p in self.deps(ref)]
                c = d["const"]
                if d["inner"] == "const":
                    v = c
                else:
                    v = {"param": lambda: args[0], "sum": lambda: sum(args), "diff": lambda: args[0] - args[1]}[d["inner"]]()
                    v = {"none": v, "add": (c or 0) + v, "mul": (c or 0) * v}[d["combine"]]
            else:
                level = self.categories.index(other)
                v = sum(
                    self.value(("instance", item, c)) * (1 if self.layer_of[c] == level else self.value(("abstract", c, other)))
                    for c in self.children[item]
                    if self.reaches(c, level)
                )
            self._values[ref] = v % P
        return self._values[ref]

    def necessary(self):
        out, stack = set(), [self.question]
        while stack:
            r = stack.pop()
            if r not in out:
                out.add(r)
                stack.extend(self.deps(r))
        return out

    def operators(self, ref):
        """The multiset of binary operators computing `ref` (sorted)."""
        deps = self.deps(ref)
        if ref[0] == "abstract":
            pairs = sum(r[0] == "abstract" for r in deps)
            ops = ["+"] * (len(deps) - 1) if pairs == 0 else ["*"] * pairs + ["+"] * (pairs - 1)
        else:
            d = self.defs[ref]
            ops = {"const": [], "param": [], "sum": ["+"] * (len(deps) - 1), "diff": ["-"]}[d["inner"]]
            ops += {"none": [], "add": ["+"], "mul": ["*"]}[d["combine"]]
        return sorted(ops)

    def op(self):
        return sum(max(1, self.in_degree(r) - 1) for r in self.necessary())

    def ref_of_phrase(self, text):
        item, other = text.split("'s ", 1)
        return ("abstract" if other in self.categories else "instance", item, other)


# --- step-by-step solution verifier --------------------------------------------------------------
class Invalid(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Invalid(message)


DEFINE = re.compile(r"Define (.+?) as ([A-Za-z]); (.*)\.")
BINARY = re.compile(r"([A-Za-z]) = (\w+) ([-+*]) (\w+) = (\d+) ([-+*]) (\d+) = (\d+)")
COPY = re.compile(r"([A-Za-z]) = ([A-Za-z]) = (\d+)")
CONST = re.compile(r"([A-Za-z]) = (\d+)")


def verify_solution(record):
    """Check every sentence and every arithmetic step of the solution against the graph."""
    model = GraphModel(record["graph"])
    params = {}  # letter -> (ref, value) of parameters defined so far
    seen_letters = set()
    defined = []
    for sentence in re.split(r"(?<=\.) (?=Define )", record["solution"]):
        m = DEFINE.fullmatch(sentence)
        check(m is not None, f"malformed sentence {sentence!r}")
        ref, var, body = model.ref_of_phrase(m.group(1)), m.group(2), m.group(3)
        check(ref in model.defs or ref[0] == "abstract", f"unknown parameter {m.group(1)!r}")
        check(ref not in defined, f"{ref} defined twice")
        check(var not in seen_letters, f"letter {var} reused")
        seen_letters.add(var)
        steps = body.split("; ")
        check(steps[-1].startswith("so "), "last step must start with 'so'")
        local = {}  # intermediate letter -> value, not yet consumed
        used_params, constants, operators = [], [], []

        def operand(token):
            if token.isdigit():
                constants.append(int(token))
                return int(token)
            if token in local:
                return local.pop(token)
            check(token in params, f"{token} used before it is defined")
            used_params.append(params[token][0])
            return params[token][1]

        for i, step in enumerate(steps):
            final = i == len(steps) - 1
            step = step[3:] if final else step
            if b := BINARY.fullmatch(step):
                target, a, op, c, n1, op2, n2, result = b.groups()
                check(op == op2, "operator changed between symbols and numbers")
                check(operand(a) == int(n1) and operand(c) == int(n2), f"operands do not match values in {step!r}")
                check(int(result) == {"+": int(n1) + int(n2), "-": int(n1) - int(n2), "*": int(n1) * int(n2)}[op] % P,
                      f"wrong arithmetic in {step!r}")
                operators.append(op)
            elif (c := COPY.fullmatch(step)) and final:
                target, a, result = c.groups()
                check(operand(a) == int(result), f"copy does not match in {step!r}")
            elif (c := CONST.fullmatch(step)) and final:
                target, result = c.groups()
                operand(result)
            else:
                raise Invalid(f"unparsable step {step!r}")
            check(0 <= int(result) < P, "value out of range")
            if final:
                check(target == var, "final step must assign the defined letter")
            else:
                check(target not in seen_letters, f"intermediate letter {target} reused")
                seen_letters.add(target)
                local[target] = int(result)
        check(not local, f"intermediates {sorted(local)} computed but never used")
        check(sorted(used_params) == sorted(model.deps(ref)), f"{ref} uses {used_params}, depends on {model.deps(ref)}")
        expected_constants = [model.defs[ref]["const"]] if model.uses_constant(ref) else []
        check(constants == expected_constants, f"{ref} constants {constants} != {expected_constants}")
        check(len(operators) == max(0, model.in_degree(ref) - 1), f"{ref}: {len(operators)} steps, in-degree {model.in_degree(ref)}")
        check(sorted(operators) == model.operators(ref), f"{ref}: operators {operators} do not match its definition")
        check(int(result) == model.value(ref), f"{ref} = {result}, expected {model.value(ref)}")
        params[var] = (ref, int(result))
        defined.append(ref)
    check(set(defined) == model.necessary(), "solution does not cover exactly the necessary parameters")
    check(defined[-1] == model.question, "the question must be defined last")
    check(params[var][1] == record["answer"], "last value is not the answer")
    return True


# --- independent parser of the problem text -------------------------------------------------------
def parse_mention(text, model):
    if m := re.fullmatch(r"each (.+)'s (.+)", text):
        return ("instance", m.group(1), m.group(2))
    m = re.fullmatch(r"the total number of (.+)s in (.+)", text)
    assert m is not None, text
    return ("abstract", m.group(2), m.group(1))


def parse_sentence(sentence, model):
    m = re.fullmatch(r"The number of each (.+?)'s (.+?) equals (.+)\.", sentence)
    assert m is not None, sentence
    ref, rhs = ("instance", m.group(1), m.group(2)), m.group(3)
    const, combine = None, "none"
    if re.fullmatch(r"\d+", rhs):
        return ref, {"inner": "const", "combine": "none", "const": int(rhs), "parents": []}
    if c := re.fullmatch(r"(\d+) (more than|times as much as) (.+)", rhs):
        const, combine, rhs = int(c.group(1)), {"more than": "add", "times as much as": "mul"}[c.group(2)], c.group(3)
    if s := re.fullmatch(r"the sum of (.+)", rhs):
        names = re.split(r", | and ", s.group(1))
        inner = "sum"
    elif d := re.fullmatch(r"the difference of (.+) and (.+)", rhs):
        names, inner = [d.group(1), d.group(2)], "diff"
    else:
        names, inner = [rhs], "param"
    parents = [list(parse_mention(n, model)) for n in names]
    return ref, {"inner": inner, "combine": combine, "const": const, "parents": parents}


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample():
    records = []
    for preset, ops in SAMPLE_OPS.items():
        for op in ops:
            records += [(op, r) for r in get_task("igsm", op=op, preset=preset).generate(12, seed=op)]
    return records


@pytest.fixture(scope="module")
def mixed():
    """A larger sample over op 1..15 (uniform per record) for statistics."""
    return list(get_task("igsm", op="1-15").generate(600, seed=11))


# --- tests --------------------------------------------------------------------------------------
def test_record_schema_and_task_hooks(sample):
    task = get_task("igsm")
    for op, record in sample:
        assert set(record) == RECORD_KEYS
        assert record["task"] == "igsm" and record["op"] == op == task.difficulty(record)
        assert record["split"] in ("train", "test")
        assert 0 <= record["answer"] < P and task.solve(record) == record["answer"]
        assert task.question(record) == record["problem"] + " " + record["question"]
        assert task.solution_trace(record) == record["solution"]
        assert task.target(record).endswith(f"<answer>{record['answer']}</answer>")
        json.dumps(record)
    assert len({r["id"] for _, r in sample}) == len(sample)


def test_exact_op_control(sample):
    for op, record in sample:
        assert GraphModel(record["graph"]).op() == op, record["id"]


def test_op_range_is_sampled_per_record(mixed):
    ops = collections.Counter(r["op"] for r in mixed)
    assert set(ops) == set(range(1, 16))
    assert max(ops.values()) < 3 * min(ops.values())


def test_every_solution_verifies_step_by_step(sample):
    for _, record in sample:
        assert verify_solution(record)
        assert GraphModel(record["graph"]).value(GraphModel(record["graph"]).question) == record["answer"]


def _swap_dependent_sentences(solution):
    sentences = re.split(r"(?<=\.) (?=Define )", solution)
    return " ".join([sentences[-1], *sentences[1:-1], sentences[0]]) if len(sentences) > 1 else None


CORRUPTIONS = {
    "last number": lambda s: re.sub(r"(\d+)\.$", lambda m: f"{(int(m.group(1)) + 1) % P}.", s),
    "a middle result": lambda s: re.sub(r"= (\d+); so", lambda m: f"= {(int(m.group(1)) + 5) % P}; so", s, count=1),
    "an operator": lambda s: s.replace(" + ", " * ", 2) if s.count(" + ") >= 2 else None,
    "order": _swap_dependent_sentences,
    "dropped sentence": lambda s: s.split(" Define ", 1)[1].join(["Define ", ""]) if " Define " in s else None,
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_solutions_fail_the_verifier(sample, kind):
    tried = 0
    for _, record in sample:
        corrupted = CORRUPTIONS[kind](record["solution"])
        if corrupted is None or corrupted == record["solution"]:
            continue
        tried += 1
        with pytest.raises(Invalid):
            verify_solution({**record, "solution": corrupted})
    assert tried >= 10


def test_problem_text_states_exactly_the_graph(sample):
    for _, record in sample:
        model = GraphModel(record["graph"])
        sentences = re.split(r"(?<=\.) (?=The number of )", record["problem"])
        assert len(sentences) == len(record["graph"]["edges"])
        stated = dict(parse_sentence(s, model) for s in sentences)
        assert stated == {ref: {k: d[k] for k in ("inner", "combine", "const", "parents")} for ref, d in model.defs.items()}


def test_distractors_present_and_question_last(sample):
    with_distractors = 0
    for _, record in sample:
        model = GraphModel(record["graph"])
        necessary_instances = {r for r in model.necessary() if r[0] == "instance"}
        distractors = set(model.defs) - necessary_instances
        with_distractors += bool(distractors)
        for _, item, child in distractors:
            assert f"The number of each {item}'s {child} equals" in record["problem"]
        assert "?" not in record["problem"] and record["question"].endswith("?")
        assert get_task("igsm").question(record).endswith(record["question"])
    assert with_distractors >= 0.9 * len(sample)


def test_sentences_are_shuffled(mixed):
    # Problem sentence order is not the graph's edge order (which is sorted by layer).
    in_edge_order = 0
    for record in mixed[:100]:
        heads = re.findall(r"The number of each (.+?)'s (.+?) equals", record["problem"])
        in_edge_order += heads == [tuple(e) for e in record["graph"]["edges"]]
    assert in_edge_order < 30


def test_answer_distribution_and_constant_guess_baseline(mixed):
    counts = collections.Counter(r["answer"] for r in mixed)
    assert set(counts) == set(range(P))
    best = max(counts.values()) / len(mixed)
    # Uniform would be 1/23 = 4.3%; answer 0 is over-represented (products with a zero factor).
    assert counts[0] / len(mixed) < 0.15 and best < 0.15


def test_determinism_across_hash_seeds():
    code = (
        "import json; from tailor_jax.tasks import get_task;"
        "print(json.dumps(list(get_task('igsm', op='1-15').generate(15, seed=7))))"
    )
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout)
    local = json.dumps(list(get_task("igsm", op="1-15").generate(15, seed=7))).encode() + b"\n"
    assert outs[0] == outs[1] == local


def test_different_seeds_differ():
    task = get_task("igsm", op=8)
    a = [r["problem"] for r in task.generate(10, seed=1)]
    b = [r["problem"] for r in task.generate(10, seed=2)]
    assert not set(a) & set(b)
    assert [r["problem"] for r in task.generate(4, seed=1)] == a[:4]  # one stream per record


def ref_sketch(solution):
    """Independent template sketch: parameter names dropped, numbers -> #, letters -> v0, v1, ...
    in order of first appearance (same equivalence classes as the task's own sketch)."""
    out, letters = [], {}
    for sentence in re.split(r"(?<=\.) (?=Define )", solution):
        rest = re.fullmatch(r"Define .+? as (.*)", sentence).group(1)
        words = []
        for tok in re.findall(r"\d+|[A-Za-z]+|\S", rest):
            if tok.isdigit():
                words.append("#")
            elif len(tok) == 1 and tok.isalpha():
                words.append("v%d" % letters.setdefault(tok, len(letters)))
            else:
                words.append(tok)
        out.append(" ".join(words))
    return "\n".join(out)


def test_template_split_follows_hash_and_is_disjoint():
    records = list(get_task("igsm", op="3-6").generate(400, seed=5))
    by_sketch = collections.defaultdict(set)
    for r in records:
        sketch = ref_sketch(r["solution"])
        by_sketch[sketch].add(r["split"])
        digest = hashlib.sha256(igsm.solution_sketch(r["solution"]).encode()).hexdigest()
        assert r["split"] == ("test" if int(digest[:8], 16) < igsm.TEST_HASH_CUTOFF else "train")
        assert r["graph"]["template"] == digest[:16]
    assert all(len(splits) == 1 for splits in by_sketch.values())
    assert len(by_sketch) < len(records)  # templates repeat at small op, so the check has teeth
    test_share = sum(r["split"] == "test" for r in records) / len(records)
    assert 0.02 < test_share < 0.3


def test_only_one_split():
    test = list(get_task("igsm", op="4-8", split="test").generate(20, seed=3))
    train = list(get_task("igsm", op="4-8", split="train").generate(80, seed=4))
    assert {r["split"] for r in test} == {"test"} and {r["split"] for r in train} == {"train"}
    assert not {ref_sketch(r["solution"]) for r in test} & {ref_sketch(r["solution"]) for r in train}


def test_split_with_no_template_raises_or_skips_the_op():
    with pytest.raises(TailorError, match="no test-split"):
        list(get_task("igsm", op=1, split="test").generate(1, seed=0))
    # op 1 has a single template (train); in a range it is skipped for the test split.
    assert {r["op"] for r in get_task("igsm", op="1-4", split="test").generate(10, seed=0)} <= {3, 4}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"op": 16}, "preset hard"),
        ({"op": 22, "preset": "hard"}, "choose op <= 21"),
        ({"op": "0"}, "op must lie in 1..15"),
        ({"op": "7-3"}, "op must lie"),
        ({"op": "x"}, "op must be an integer"),
        ({"preset": "easy"}, "unknown igsm preset"),
        ({"split": "dev"}, "split must be"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(TailorError, match=message):
        get_task("igsm", **options)


def test_solve_rejects_malformed_records():
    task = get_task("igsm")
    with pytest.raises(TailorError):
        task.solve({"graph": {"modulus": 23}})
    record = next(r for r in task.generate(20, seed=0) if r["graph"]["question"][0] == "instance")
    cyclic = json.loads(json.dumps(record))
    q = cyclic["graph"]["question"]
    d = next(p for p in cyclic["graph"]["params"] if [p["item"], p["of"]] == q[1:])
    d.update(inner="param", combine="none", const=None, parents=[q])
    with pytest.raises(TailorError, match="cycle"):
        task.solve(cyclic)


def test_parse_answer_and_rewards_hand_cases():
    task = get_task("igsm")
    record = next(task.generate(1, seed=0))
    assert task.format_answer(17) == "17"
    cases = {"17": 17, " 5\n": 5, "0": 0, "22": 22, "007": 7, "23": None, "-1": None, "5.0": None,
             "five": None, "": None, "1 2": None, "\u0663": None, "+3": None, "1e1": None}
    for text, expected in cases.items():
        assert task.parse_answer(text, record) == expected, text
    assert task.parse_answer(None, record) is None
    right, wrong = str(record["answer"]), str((record["answer"] + 1) % P)
    assert task.reward("binary", record, f"<think>x</think><answer>{right}</answer>") == 1.0
    assert task.reward("binary", record, f"so \\boxed{{{right}}}") == 1.0
    assert task.reward("binary", record, f"<answer>{wrong}</answer>") == 0.0
    assert task.reward("binary", record, f"<answer>{right}</answer>", finished=False) == 0.0
    assert task.reward("logic_rl", record, f"<think>x</think><answer>{right}</answer>") == 3.0
    assert task.reward("logic_rl", record, f"<think>x</think><answer>{wrong}</answer>") == -0.5
    assert task.reward("logic_rl", record, "<think>x</think><answer>99</answer>") == -1.0
    assert task.reward("logic_rl", record, task.target(record)) == 3.0


_RECORD = next(get_task("igsm").generate(1, seed=0))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.integers(-50, 50).map(str), st.from_regex(r"\s*[0-9]{1,30}\s*", fullmatch=True)))
def test_fuzz_parse_answer_and_reward(text):
    task = get_task("igsm")
    parsed = task.parse_answer(text, _RECORD)
    assert parsed is None or (isinstance(parsed, int) and 0 <= parsed < P)
    assert task.reward("binary", _RECORD, f"<answer>{text}</answer>") in (0.0, 1.0)
    assert task.reward("logic_rl", _RECORD, f"<think></think><answer>{text}</answer>") in (3.0, -0.5, -1.0, -3.0)


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "igsm.jsonl"
    assert cli_main(["generate", "igsm", "--num", "5", "--op", "4", "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5 and all(r["op"] == 4 and verify_solution(r) for r in records)
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    assert cli_main(["generate", "igsm", "--num", "5", "--op", "16", "--out", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "max_op 15" in err and not bad.exists()
    assert cli_main(["generate", "igsm", "--num", "3", "--op", "5-9", "--split", "test", "--out", str(out),
                     "--no-progress"]) == 0
    assert {json.loads(line)["split"] for line in out.read_text().splitlines()} == {"test"}
