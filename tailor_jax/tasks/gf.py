"""GF(p) operation chains: our reconstruction of the "Select and Improve" arithmetic task.

A chain v0 -op1-> v1 -> ... -opk-> vk over GF(p) (p = 11 or 13), each op one of `+c`, `-c`,
`*c` with c != 0. Numerals are written as two-letter syllables through a seeded bijection,
so pretrained arithmetic does not help. Two kinds of problem:

- `evaluation`: v0 is given, the answer is vk (the unknown output is called `y`);
- `inversion`: vk is given, the answer is v0 (the unknown input is called `x`).

Two trace renderers (pure functions over a record):

- `forward_trace` walks the chain in its natural direction: numerically on evaluation,
  carrying x as an affine map `a*x+b` on inversion and solving at the end;
- `backward_trace` walks it from the far end: undoing each op numerically on inversion,
  carrying y as an affine map through the inverse ops on evaluation and solving at the end.

Trace grammar (one line per step, field values as symbols only; see docs/tasks-gf.md):

    num_step   := [TAG] SYM OP SYM "=" SYM    (2) ka + mo = ri
    map_step   := [TAG] MAP OP SYM "=" MAP    (1) bo*x+da * mo = mo*x+da
    inv_fact   := [TAG] "inv" SYM "=" SYM     (3) inv su = ko
    equation   := MAP "=" SYM                 mo*x+ri = te
    conclusion := VAR "=" SYM                 x = ko
    MAP := SYM "*" VAR "+" SYM ;  VAR := "x" | "y" ;  OP := "+" | "-" | "*"
    TAG := "(" i ")"   the tag of the op the line applies or undoes: its position 1..k, or
                       with `tag_pool` N its entry of the record's `tags` (sorted, from 1..N)

The question tags its ops the same way: "apply (1) + ka, (2) * mo in order".

Tokens are separated by single spaces; a MAP is one token.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import CliOption, DatasetConfig, DatasetLevel, Task, parse_level_range
from tailor_jax.tasks.prompt import format_completion

PRIMES = (11, 13)
KINDS = ("evaluation", "inversion")
STRATEGIES = ("forward", "backward", "mixed")
DATASET_RANGES = {"sft": (2, 5), "rl": (6, 9), "rl_long": (6, 15)}  # dataset config: chain lengths k
OPS = ("+", "-", "*")
MIN_STEPS, MAX_STEPS = 1, 32
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)  # 70 two-letter symbols

# Distinct problems sampled per requested record before the generator gives up: small
# (p, k) spaces run out of distinct problems, and then we say so instead of looping.
MAX_DRAWS_PER_RECORD = 50


# --- field arithmetic -------------------------------------------------------------------
def inverse(a: int, p: int) -> int:
    """Multiplicative inverse of a non-zero element of GF(p)."""
    if a % p == 0:
        raise ValueError("0 has no multiplicative inverse")
    return pow(a, p - 2, p)


def apply_op(op: str, value: int, c: int, p: int) -> int:
    if op == "+":
        return (value + c) % p
    if op == "-":
        return (value - c) % p
    if op == "*":
        return (value * c) % p
    raise ValueError(f"unknown op {op!r}")


def undo_op(op: str, value: int, c: int, p: int) -> int:
    """The v with apply_op(op, v, c) == value."""
    if op == "+":
        return (value - c) % p
    if op == "-":
        return (value + c) % p
    if op == "*":
        return (value * inverse(c, p)) % p
    raise ValueError(f"unknown op {op!r}")


def run_chain(ops: list, v0: int, p: int) -> int:
    value = v0
    for op, c in ops:
        value = apply_op(op, value, c, p)
    return value


def unrun_chain(ops: list, vk: int, p: int) -> int:
    value = vk
    for op, c in reversed(ops):
        value = undo_op(op, value, c, p)
    return value


# --- symbols -----------------------------------------------------------------------------
def symbol_table(p: int, symbol_seed: int = 0) -> dict[str, str]:
    """A seeded bijection {str(integer): syllable} over 0..p-1 (string keys, as in JSON)."""
    rng = np.random.default_rng([symbol_seed, p])
    chosen = rng.choice(len(SYLLABLES), size=p, replace=False)
    return {str(i): SYLLABLES[j] for i, j in enumerate(chosen)}


def symbol(record: dict, value: int) -> str:
    return record["symbols"][str(value)]


def _map(record: dict, a: int, var: str, b: int) -> str:
    return f"{symbol(record, a)}*{var}+{symbol(record, b)}"


def chain_values(record: dict) -> tuple[int, int]:
    """(v0, vk) of a record."""
    if record["kind"] == "evaluation":
        return record["given"], record["answer"]
    return record["answer"], record["given"]


# --- renderers (pure) --------------------------------------------------------------------
# The question numbers its ops, "(1) + ka, (2) * mo", and every line that applies or undoes an
# op starts with that op's tag. A model finds the op of a step by its number instead of
# counting lines, which tiny models trained from scratch do badly (measured: docs/results.md).


class Step(NamedTuple):
    """One walk step: apply `op c`, tagged with the chain position `index` (1-based) of the op
    it applies or undoes; `inverts` is the original constant when `c` is its inverse (the line
    is then preceded by the fact `inv inverts = c`)."""

    index: int
    op: str
    c: int
    inverts: int | None = None


def tag_labels(record: dict) -> list[int]:
    """The number each op is tagged with: 1..k, or the record's own `tags` (see `tag_pool`)."""
    return [int(t) for t in record["tags"]] if "tags" in record else list(range(1, len(record["ops"]) + 1))


def step_tag(record: dict, index: int) -> str:
    """The tag of op `index` (1-based chain position), as written before a step."""
    return f"({tag_labels(record)[index - 1]}) "


def render_question(record: dict) -> str:
    ops = ", ".join(f"{step_tag(record, i)}{op} {symbol(record, c)}" for i, (op, c) in enumerate(record["ops"], 1))
    field = f"GF({record['p']})"
    if record["kind"] == "evaluation":
        return f"In {field}, start from {symbol(record, record['given'])} and apply {ops} in order. What is the result y?"
    return f"In {field}, an unknown x becomes {symbol(record, record['given'])} after applying {ops} in order. What is x?"


def forward_steps(record: dict) -> list[Step]:
    """The chain's ops in order, as steps 1..k."""
    return [Step(i, op, int(c)) for i, (op, c) in enumerate(record["ops"], 1)]


def undo_steps(record: dict) -> list[Step]:
    """The inverse ops, last op first (`*c` becomes `*` by the inverse of c)."""
    p, flip = record["p"], {"+": "-", "-": "+"}
    return [
        Step(i, "*", inverse(int(c), p), int(c)) if op == "*" else Step(i, flip[op], int(c))
        for i, (op, c) in reversed(list(enumerate(record["ops"], 1)))
    ]


def _inv_fact(record: dict, step: Step) -> list[str]:
    if step.inverts is None:
        return []
    return [f"{step_tag(record, step.index)}inv {symbol(record, step.inverts)} = {symbol(record, step.c)}"]


def solve_lines(record: dict, var: str, a: int, b: int, known: int) -> list[str]:
    """Lines that solve a*var + b = known for var; returns them ending with the conclusion."""
    p = record["p"]
    diff = (known - b) % p
    a_inv = inverse(a, p)
    value = (diff * a_inv) % p
    s = lambda v: symbol(record, v)  # noqa: E731
    return [
        f"{_map(record, a, var, b)} = {s(known)}",
        f"{s(known)} - {s(b)} = {s(diff)}",
        f"inv {s(a)} = {s(a_inv)}",
        f"{s(diff)} * {s(a_inv)} = {s(value)}",
        f"{var} = {s(value)}",
    ]


def numeric_walk(record: dict, start: int, steps: list[Step]) -> tuple[list[str], int]:
    """Apply the steps numerically, one tagged line each (plus its `inv` fact, if any)."""
    p = record["p"]
    s = lambda v: symbol(record, v)  # noqa: E731
    lines, value = [], start
    for step in steps:
        new = apply_op(step.op, value, step.c, p)
        lines += _inv_fact(record, step)
        lines.append(f"{step_tag(record, step.index)}{s(value)} {step.op} {s(step.c)} = {s(new)}")
        value = new
    return lines, value


def affine_walk(record: dict, var: str, steps: list[Step]) -> tuple[list[str], int, int]:
    """Carry var as a*var+b through the steps, one tagged line each (plus its `inv` fact)."""
    p = record["p"]
    lines, a, b = [], 1, 0
    for step in steps:
        if step.op == "*":
            new_a, new_b = (a * step.c) % p, (b * step.c) % p
        else:
            new_a, new_b = a, apply_op(step.op, b, step.c, p)
        lines += _inv_fact(record, step)
        lines.append(
            f"{step_tag(record, step.index)}{_map(record, a, var, b)} {step.op} {symbol(record, step.c)} = "
            f"{_map(record, new_a, var, new_b)}"
        )
        a, b = new_a, new_b
    return lines, a, b


def forward_trace(record: dict) -> str:
    steps = forward_steps(record)
    if record["kind"] == "evaluation":
        lines, value = numeric_walk(record, record["given"], steps)
        return "\n".join(lines + [f"y = {symbol(record, value)}"])
    lines, a, b = affine_walk(record, "x", steps)
    return "\n".join(lines + solve_lines(record, "x", a, b, record["given"]))


def backward_trace(record: dict) -> str:
    steps = undo_steps(record)
    if record["kind"] == "inversion":
        lines, value = numeric_walk(record, record["given"], steps)
        return "\n".join(lines + [f"x = {symbol(record, value)}"])
    lines, a, b = affine_walk(record, "y", steps)
    return "\n".join(lines + solve_lines(record, "y", a, b, record["given"]))


RENDERERS = {"forward": forward_trace, "backward": backward_trace}


def mixed_strategy(record: dict) -> str:
    """The renderer `mixed` uses for a record: a fixed function of the record id."""
    return ("forward", "backward")[zlib.crc32(str(record["id"]).encode()) % 2]


# --- step checker --------------------------------------------------------------------------
_SYM = r"([a-z]{2})"
_MAP = _SYM + r"\*([xy])\+" + _SYM
_OP = r"([-+*])"
_LINE_FORMS = {
    "num_step": re.compile(rf"^{_SYM} {_OP} {_SYM} = {_SYM}$"),
    "map_step": re.compile(rf"^{_MAP} {_OP} {_SYM} = {_MAP}$"),
    "inv_fact": re.compile(rf"^inv {_SYM} = {_SYM}$"),
    "equation": re.compile(rf"^{_MAP} = {_SYM}$"),
    "conclusion": re.compile(r"^([xy]) = " + _SYM + "$"),
}


def check_trace(record: dict, trace: str) -> list[str]:
    """Check every line of a trace against the field arithmetic of `record`.

    Returns one message per bad line (empty list = every line is well formed and right).
    Numeric steps and `inv` facts are checked as arithmetic; map steps as affine-map algebra;
    an equation `a*v+b = s` and a conclusion `v = s` must hold for the record's true value of
    v (x = v0, y = vk); a step tag `(i)` must name the op the line applies or undoes. Chain
    continuity between lines is not checked. Never raises.
    """
    try:
        p = int(record["p"])
        value_of = {sym: int(i) for i, sym in record["symbols"].items()}
        v0, vk = chain_values(record)
        var_value = {"x": int(v0), "y": int(vk)}
    except Exception as err:  # a malformed record is reported, not raised
        return [f"record is malformed: {err!r}"]
    if not isinstance(trace, str) or not trace.strip():
        return ["trace is empty"]
    errors = []
    for lineno, raw in enumerate(trace.strip().split("\n"), 1):
        line = raw.strip()
        label, body = split_step_tag(line)
        problem = _check_line(body, p, value_of, var_value)
        if problem is None and label is not None:
            problem = check_step_tag(record, label, body)
        if problem:
            errors.append(f"line {lineno} {line!r}: {problem}")
    return errors


_TAG = re.compile(r"^\((\d{1,2})\) ")


def split_step_tag(line: str) -> tuple[int | None, str]:
    """(label, rest) of a line tagged `(label) rest`; (None, line) for an untagged line."""
    match = _TAG.match(line)
    return (int(match.group(1)), line[match.end() :]) if match else (None, line)


def check_step_tag(record: dict, label: int, body: str) -> str | None:
    """Whether the line `body` (tag removed) applies or undoes the op tagged `label`.

    A numeric or map step must use that op itself or its inverse op; an `inv c = c'` fact must
    state the inverse of the op's constant, a multiplication. Never raises.
    """
    try:
        ops = [(op, int(c)) for op, c in record["ops"]]
        value_of = {sym: int(i) for i, sym in record["symbols"].items()}
        labels = tag_labels(record)
        if label not in labels:
            return f"step tag ({label}) names none of the chain's {len(ops)} ops"
        index = labels.index(label) + 1
        op, c = ops[index - 1]
        if match := _LINE_FORMS["inv_fact"].match(body):
            ok = op == "*" and value_of[match.group(1)] == c
            return None if ok else f"op ({label}) is not a multiplication by this constant"
        match = _LINE_FORMS["num_step"].match(body) or _LINE_FORMS["map_step"].match(body)
        if not match:
            return "a step tag on a line that is not a step"
        groups = match.groups()
        line_op, line_c = (groups[1], groups[2]) if len(groups) == 4 else (groups[3], groups[4])
        undo = undo_steps(record)[len(ops) - index]
        return None if (line_op, value_of[line_c]) in ((op, c), (undo.op, undo.c)) else f"does not apply or undo op ({label})"
    except Exception as err:  # noqa: BLE001 - a malformed record or symbol is reported
        return f"cannot check the step tag: {err!r}"


def _check_line(line: str, p: int, value_of: dict[str, int], var_value: dict[str, int]) -> str | None:
    for form, pattern in _LINE_FORMS.items():
        match = pattern.match(line)
        if match:
            break
    else:
        return "not a step of the trace grammar"
    groups = match.groups()
    syms = [g for g in groups if len(g) == 2]
    unknown = [s for s in syms if s not in value_of]
    if unknown:
        return f"unknown symbol {unknown[0]!r}"
    v = lambda s: value_of[s]  # noqa: E731
    if form == "num_step":
        left, op, c, right = groups
        return None if apply_op(op, v(left), v(c), p) == v(right) else "wrong arithmetic"
    if form == "inv_fact":
        a, a_inv = groups
        return None if (v(a) * v(a_inv)) % p == 1 else "not the inverse"
    if form == "map_step":
        a, var, b, op, c, a2, var2, b2 = groups
        if var != var2:
            return "variable changes within the line"
        if op == "*":
            want = ((v(a) * v(c)) % p, (v(b) * v(c)) % p)
        else:
            want = (v(a), apply_op(op, v(b), v(c), p))
        return None if want == (v(a2), v(b2)) else "wrong map arithmetic"
    if form == "equation":
        a, var, b, known = groups
        ok = (v(a) * var_value[var] + v(b)) % p == v(known)
        return None if ok else "equation does not hold"
    var, s = groups
    return None if var_value[var] == v(s) else "wrong value"


# --- the task ----------------------------------------------------------------------------
class GFChain(Task):
    """GF(p) chains. Options: p (11|13), kind, steps (k or "lo-hi"), strategy, symbol_seed, tag_pool."""

    name = "gf"
    level_option = "steps"
    level_label = "k"
    key_fields = ("p", "kind", "given", "ops")
    cli_options = (
        CliOption("p", "field size, 11 or 13", int),
        CliOption("kind", "evaluation, inversion or both"),
        CliOption("steps", "chain length k, or a range such as 2-5"),
        CliOption("tag_pool", "tag each chain's ops with sorted distinct numbers from 1..N (default: 1..k)", int),
    )
    trace_variables = frozenset({"x", "y"})

    @classmethod
    def dataset_configs(cls) -> list[DatasetConfig]:
        """Per p in (11, 13): `sft` (k = 2..5), `rl` (6..9), `rl_long` (6..15); p = 13 names end in `_p13`."""
        configs = []
        for p in PRIMES:
            for name, (lo, hi) in DATASET_RANGES.items():
                levels = tuple(DatasetLevel({"p": p, "steps": k}, ((f"test_k{k}", "test", 200), ("train", "train", 2000)))
                               for k in range(lo, hi + 1))
                configs.append(DatasetConfig(name if p == 11 else f"{name}_p{p}",
                                             f"GF({p}) chains, k = {lo}..{hi}: train 2000 per k, test 200 per k, both kinds", levels))
        return configs

    def __init__(
        self,
        p: int | str = 11,
        kind: str = "both",
        steps: int | str | tuple = "2-5",
        strategy: str = "forward",
        symbol_seed: int | str = 0,
        tag_pool: int | str = 0,
    ):
        try:
            p = int(p)
        except (TypeError, ValueError):
            raise TailorError(f"gf p must be 11 or 13, got {p!r}") from None
        if p not in PRIMES:
            raise TailorError(f"gf p must be 11 or 13, got {p}")
        if kind not in (*KINDS, "both"):
            raise TailorError(f"gf kind must be evaluation, inversion or both, got {kind!r}")
        if strategy not in STRATEGIES:
            raise TailorError(f"gf strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        try:
            symbol_seed = int(symbol_seed)
        except (TypeError, ValueError):
            raise TailorError(f"gf symbol_seed must be a non-negative integer, got {symbol_seed!r}") from None
        if symbol_seed < 0:
            raise TailorError(f"gf symbol_seed must be a non-negative integer, got {symbol_seed}")
        try:
            tag_pool = int(tag_pool)
        except (TypeError, ValueError):
            raise TailorError(f"gf tag_pool must be 0 (tags 1..k) or the largest tag, got {tag_pool!r}") from None
        self.steps = parse_level_range(steps, "gf steps", MIN_STEPS, MAX_STEPS)
        if tag_pool and not self.steps[1] <= tag_pool <= 99:
            raise TailorError(
                f"gf tag_pool {tag_pool} must be 0 (tags 1..k) or from the longest chain's {self.steps[1]} steps up to 99"
            )
        self.tag_pool = tag_pool
        self.p = p
        self.kinds = KINDS if kind == "both" else (kind,)
        self.strategy = strategy
        self.symbol_seed = symbol_seed
        self.symbols = symbol_table(p, symbol_seed)

    # --- data -------------------------------------------------------------------------
    def generate(self, num: int, seed: int) -> Iterator[dict]:
        """Yield `num` distinct problems (no repeated kind/ops/given) from one seeded stream."""
        rng = np.random.default_rng(seed)
        p, (lo, hi) = self.p, self.steps
        seen: set = set()
        draws = 0
        while len(seen) < num:
            draws += 1
            if draws > MAX_DRAWS_PER_RECORD * num:
                raise TailorError(
                    f"gf found only {len(seen)} distinct problems for p={p}, steps={lo}-{hi} in {draws - 1} "
                    f"draws; ask for fewer problems or longer chains"
                )
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            k = int(rng.integers(lo, hi + 1))
            op_index = rng.integers(0, len(OPS), size=k)
            consts = rng.integers(1, p, size=k)
            v0 = int(rng.integers(0, p))
            ops = [[OPS[i], int(c)] for i, c in zip(op_index, consts)]
            vk = run_chain(ops, v0, p)
            given, answer = (v0, vk) if kind == "evaluation" else (vk, v0)
            key = (kind, given, tuple(map(tuple, ops)))
            if key in seen:
                continue
            seen.add(key)
            record = {
                "task": "gf",
                "id": f"gf-p{p}-s{seed}-{len(seen) - 1}",
                "p": p,
                "kind": kind,
                "k": k,
                "ops": ops,
                "given": given,
                "answer": answer,
                "question": "",
                "symbols": dict(self.symbols),
            }
            if self.tag_pool:
                record["tags"] = sorted(int(t) for t in rng.choice(np.arange(1, self.tag_pool + 1), size=k, replace=False))
            record["question"] = render_question(record)
            yield record

    def solve(self, record: dict) -> int:
        p = record["p"]
        if record["kind"] == "evaluation":
            return run_chain(record["ops"], record["given"], p)
        return unrun_chain(record["ops"], record["given"], p)

    def difficulty(self, record: dict) -> int:
        return len(record["ops"])

    # --- text -------------------------------------------------------------------------
    def question(self, record: dict) -> str:
        return render_question(record)

    def solution_trace(self, record: dict) -> str:
        strategy = mixed_strategy(record) if self.strategy == "mixed" else self.strategy
        return RENDERERS[strategy](record)

    def format_answer(self, answer: int) -> str:
        return self.symbols[str(answer)]

    def parse_answer(self, text: str, record: dict) -> int | None:
        try:
            wanted = text.strip()
            for value, symbol in record["symbols"].items():
                if symbol == wanted:
                    return int(value)
        except Exception:
            return None
        return None

    def target(self, record: dict, trace: str | None = None) -> str:
        # The record's own symbol table (it may come from another symbol_seed).
        trace = self.solution_trace(record) if trace is None else trace
        return format_completion(trace, record["symbols"][str(record["answer"])])


TASK_CLASS = GFChain
