"""Prompt rendering shared by all tasks: a plain template for tiny from-scratch models and
chat messages for instruct checkpoints, with an optional `<think>` prefill."""

from __future__ import annotations

from dataclasses import dataclass

from tailor_jax.errors import TailorError

SYSTEM_PROMPT = (
    "You are a careful reasoner. Think step by step inside <think> </think>, "
    "then give the final answer inside <answer> </answer>."
)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
PROMPT_STYLES = ("plain", "chat")


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt. `text` for the plain style, `messages` for chat; `prefill` is the
    start of the assistant turn that the model continues (part of the scored completion)."""

    style: str
    text: str | None
    messages: list[dict] | None
    prefill: str


def render_prompt(question: str, *, style: str = "plain", think_prefill: bool = False) -> Prompt:
    prefill = THINK_OPEN if think_prefill else ""
    if style == "plain":
        text = f"User: {question}\nAssistant: {prefill}"
        return Prompt(style, text, None, prefill)
    if style == "chat":
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ]
        return Prompt(style, None, messages, prefill)
    raise TailorError(f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}")


def format_completion(trace: str, answer_text: str) -> str:
    """The assistant text of a demonstration: <think>trace</think> <answer>answer</answer>."""
    return f"{THINK_OPEN}{trace}{THINK_CLOSE}\n{ANSWER_OPEN}{answer_text}{ANSWER_CLOSE}"
