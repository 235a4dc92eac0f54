"""K&K text: names, statements and quizzes in English, the solution text, the
assume-and-refute trace, and answer parsing."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from functools import lru_cache

from tailor_jax.tasks.kk.logic import LEAF_KINDS, knight_masks, truth_table


NAME_POOL = (
    "Alice", "Benjamin", "Charlotte", "Daniel", "Emily", "Felix", "Grace", "Henry", "Isabella",
    "Jack", "Katherine", "Liam", "Mia", "Noah", "Olivia", "Peter", "Quinn", "Rachel", "Samuel",
    "Sophia", "Thomas", "Ursula", "Victor", "William", "Xavier", "Yara", "Zoey", "Aiden", "Bella",
    "Caleb", "Chloe", "David", "Ella", "Ethan", "Fiona", "George", "Hannah", "Isaac", "Julia",
    "Kevin", "Lily", "Lucas", "Madison", "Mason", "Nora", "Oliver", "Penelope", "Riley", "Ryan",
    "Scarlett", "Sebastian", "Taylor", "Tyler", "Victoria", "Wyatt", "Zachary", "Amelia", "Evelyn",
    "Harper", "Jacob",
)  # fmt: skip

# `{name}` speaks; `{S}` is the statement with a capital first letter (quoted speech), `{s}`
# as it reads inside a sentence (reported speech).
SPEECH_TEMPLATES = (
    '{name} said, "{S}."',
    "{name} told you that {s}.",
    'In {name}\'s words: "{S}."',
    '{name} stated, "{S}."',
    "{name} claimed that {s}.",
    '{name} remarked, "{S}."',
    'According to {name}, "{S}."',
    '{name} asserted: "{S}."',
    '{name} noted, "{S}."',
    '{name} commented, "{S}."',
    'As {name} put it, "{S}."',
    "{name} insisted that {s}.",
    '"{S}," said {name}.',
    '{name} mentioned, "{S}."',
)

OPENING = (
    "A very special island is inhabited only by knights and knaves. "
    "Knights always tell the truth, and knaves always lie."
)
CLOSING = "So who is a knight and who is a knave?"

# --- text ----------------------------------------------------------------------------------
def _role(is_knight: bool) -> str:
    return "knight" if is_knight else "knave"


def _is_simple(statement: tuple) -> bool:
    """Rendered as one clause with no connective: a leaf or not(leaf)."""
    return statement[0] in LEAF_KINDS or (statement[0] == "not" and statement[1][0] in LEAF_KINDS)


def render_statement(statement: tuple, names: Sequence[str]) -> str:
    """Statement text; every compound sub-statement is parenthesised, so any depth is unambiguous."""
    op, *args = statement
    if op in LEAF_KINDS:
        return f"{names[args[0]]} is a {_role(op == 'telling-truth')}"
    if op == "not":
        inner = args[0]
        if inner[0] in LEAF_KINDS:
            return f"{names[inner[1]]} is not a {_role(inner[0] == 'telling-truth')}"
        return f"it is not the case that ({render_statement(inner, names)})"
    parts = [render_statement(a, names) if _is_simple(a) else f"({render_statement(a, names)})" for a in args]
    if op in ("and", "or"):
        return f" {op} ".join(parts)
    if op == "->":
        return f"if {parts[0]} then {parts[1]}"
    if op == "<=>":
        return f"{parts[0]} if and only if {parts[1]}"
    raise ValueError(f"unknown statement operator {op!r}")


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_names(names: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def render_quiz(names: Sequence[str], statements: Sequence[tuple], templates: Sequence[int]) -> str:
    sentences = [OPENING, f"You meet {len(names)} inhabitants: {join_names(names)}."]
    for name, statement, template in zip(names, statements, templates):
        text = render_statement(statement, names)
        sentences.append(SPEECH_TEMPLATES[template].format(name=name, s=text, S=_capitalize(text)))
    sentences.append(CLOSING)
    return " ".join(sentences)


def solution_text(names: Sequence[str], solution: Sequence[bool]) -> str:
    """'A is a knight and B is a knave.' / 'A is a knight, B is a knave, and C is a knight.'"""
    clauses = [f"{name} is a {_role(role)}" for name, role in zip(names, solution)]
    if len(clauses) == 2:
        return f"{clauses[0]} and {clauses[1]}."
    return ", ".join(clauses[:-1]) + ", and " + clauses[-1] + "."


def solution_text_format(names: Sequence[str], solution: Sequence[bool]) -> str:
    """'(1) A is a knight\\n(2) B is a knave' -- the text expected inside <answer>."""
    return "\n".join(f"({i}) {name} is a {_role(role)}" for i, (name, role) in enumerate(zip(names, solution), 1))

def assume_and_refute(names: Sequence[str], statements: Sequence[tuple]) -> list[str]:
    """Depth-first search over roles in name order, as text. After each assumption it checks,
    once per branch, every statement whose speaker's role is assumed and whose truth is already
    settled (the same for every way of filling in the roles not yet assumed); a mismatch
    refutes the assumption."""
    n = len(names)
    masks, full = knight_masks(n)
    tables = [truth_table(s, masks, full) for s in statements]
    roles: list[bool | None] = [None] * n
    lines: list[str] = []

    def settled_value(i: int, region: int) -> bool | None:
        """Statement i's value on every assignment in `region` (None if it varies there)."""
        if tables[i] & region == region:
            return True
        return False if tables[i] & region == 0 else None

    def checks(checked: frozenset, region: int) -> tuple[bool, frozenset]:
        for i in range(n):
            if i in checked or roles[i] is None:
                continue
            value = settled_value(i, region)
            if value is None:
                continue
            checked = checked | {i}
            said = f'{names[i]}\'s statement "{render_statement(statements[i], names)}" is then {str(value).lower()}'
            if value != roles[i]:
                lines.append(f"{said}, but {names[i]} is a {_role(roles[i])}: contradiction.")
                return False, checked
            lines.append(f"{said}, consistent with {names[i]} being a {_role(roles[i])}.")
        return True, checked

    def search(k: int, checked: frozenset, region: int) -> bool:
        for role in (True, False):
            roles[k] = role
            lines.append(f"Assume {names[k]} is a {_role(role)}.")
            narrowed = region & (masks[k] if role else full ^ masks[k])
            ok, now_checked = checks(checked, narrowed)
            if not ok:
                lines.append(f"So {names[k]} cannot be a {_role(role)}.")
                continue
            if k + 1 == n or search(k + 1, now_checked, narrowed):
                return True
            lines.append(f"Neither role works for {names[k + 1]}, so {names[k]} cannot be a {_role(role)}.")
        roles[k] = None
        return False

    if search(0, frozenset(), full):
        lines.append(f"All {n} statements are consistent with these roles: {solution_text(names, roles)}")
    else:
        lines.append("No assignment of roles is consistent with all statements.")
    return lines

# --- answer parsing ------------------------------------------------------------------------
ROLE_WORD = re.compile("knight|knave", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _claim_pattern(name: str) -> re.Pattern:
    # No nested quantifiers: matching is linear in the text length.
    return re.compile(rf"(?<!\w){re.escape(name)}\s+is\s+a\s+(knight|knave)(?!\w)", re.IGNORECASE)


def parse_roles(text: str, names: Sequence[str]) -> list[bool] | None:
    """Roles from an answer such as "(1) Zoey is a knave (2) Noah is a knight": each person
    stated exactly once as "Name is a knight|knave" (any case), and no other occurrence of
    knight/knave anywhere (so the count of role words equals the number of people)."""
    if not isinstance(text, str) or not names:
        return None
    role_words = 0
    for _ in ROLE_WORD.finditer(text):
        role_words += 1
        if role_words > len(names):
            return None
    if role_words != len(names):
        return None
    roles = []
    for name in names:
        matches = list(itertools.islice(_claim_pattern(name).finditer(text), 2))
        if len(matches) != 1:
            return None
        roles.append(matches[0].group(1).lower() == "knight")
    return roles
