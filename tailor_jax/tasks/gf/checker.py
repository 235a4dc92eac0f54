"""The GF step checker: every line of a trace in the task grammar, checked against the record
(field arithmetic, inverses, affine-map algebra, equations, conclusions, step tags)."""

from __future__ import annotations

import re

from tailor_jax.tasks.gf.chain import apply_op, chain_values, tag_labels, undo_steps


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
