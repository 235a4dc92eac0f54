"""Reward functions shared by all tasks (pure string functions; never raise, never eval).

`logic_rl` (range [-3, 3]): format +1 if <think>, </think>, <answer>, </answer> each occur
exactly once and in that order, else -1; answer (scored only when the format passed) +2 if
the parsed answer is right, -1.5 if it parses but is wrong, -2 if it does not parse or the
format failed. Possible totals: 3, -0.5, -1, -3.

`binary` (range [0, 1]): 1 if the completion ended (not truncated) and its final answer (the
last <answer>...</answer>, else the last \\boxed{...}) parses and is right, else 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tailor_jax.errors import TailorError
from tailor_jax.tasks.prompt import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

REWARD_FUNCTIONS = ("logic_rl", "binary")
REWARD_RANGES = {"logic_rl": (-3.0, 3.0), "binary": (0.0, 1.0)}
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_ok(text: str) -> bool:
    """Each tag exactly once, in the order think-open, think-close, answer-open, answer-close."""
    positions = []
    for tag in _TAGS:
        if text.count(tag) != 1:
            return False
        positions.append(text.index(tag))
    return positions == sorted(positions)


def last_tagged_answer(text: str) -> str | None:
    """The content of the last <answer>...</answer>, or None."""
    end = text.rfind(ANSWER_CLOSE)
    if end < 0:
        return None
    start = text.rfind(ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return text[start + len(ANSWER_OPEN) : end]


def last_boxed(text: str) -> str | None:
    """The content of the last balanced \\boxed{...}, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def final_answer(text: str) -> str | None:
    answer = last_tagged_answer(text)
    return answer if answer is not None else last_boxed(text)


def _safe(fn: Callable[[Any], Any], value: Any) -> Any:
    try:
        return fn(value)
    except Exception:  # a grading hook must never turn a model output into a crash
        return None


def logic_rl_reward(text: str, parse: Callable[[str], Any], check: Callable[[Any], bool]) -> float:
    if not format_ok(text):
        return -1.0 - 2.0
    parsed = _safe(parse, last_tagged_answer(text))
    if parsed is None:
        return 1.0 - 2.0
    return 1.0 + (2.0 if _safe(check, parsed) is True else -1.5)


def binary_reward(
    text: str, parse: Callable[[str], Any], check: Callable[[Any], bool], *, finished: bool
) -> float:
    if not finished:
        return 0.0
    answer = final_answer(text)
    if answer is None:
        return 0.0
    parsed = _safe(parse, answer)
    return 1.0 if parsed is not None and _safe(check, parsed) is True else 0.0


def score(
    fn: str,
    text: str,
    *,
    parse: Callable[[str], Any],
    check: Callable[[Any], bool],
    finished: bool = True,
) -> float:
    """Dispatch to a named reward function."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if fn == "logic_rl":
        return logic_rl_reward(text, parse, check)
    if fn == "binary":
        return binary_reward(text, parse, check, finished=finished)
    raise TailorError(f"unknown reward function {fn!r}; use one of {', '.join(REWARD_FUNCTIONS)}")
