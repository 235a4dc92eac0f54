"""Shared reward functions: documented values on hand-written cases, and fuzzing."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tailor_jax.tasks import rewards

parse_int = lambda s: int(s.strip()) if s.strip().isdigit() else None  # noqa: E731
is_seven = lambda a: a == 7  # noqa: E731


def logic(text):
    return rewards.score("logic_rl", text, parse=parse_int, check=is_seven)


def binary(text, finished=True):
    return rewards.score("binary", text, parse=parse_int, check=is_seven, finished=finished)


def test_logic_rl_documented_values():
    assert logic("<think>x</think><answer>7</answer>") == 3.0
    assert logic("<think>x</think><answer>8</answer>") == -0.5
    assert logic("<think>x</think><answer>seven</answer>") == -1.0
    assert logic("<think>x</think><answer>7</answer><answer>7</answer>") == -3.0  # duplicate tag
    assert logic("<answer>7</answer><think>x</think>") == -3.0  # wrong order
    assert logic("<think>x</think><answer>7") == -3.0  # truncated


def test_binary_documented_values():
    assert binary("<answer>7</answer>") == 1.0
    assert binary("blah \\boxed{7}") == 1.0
    assert binary("\\boxed{7} then <answer>8</answer>") == 0.0  # <answer> takes precedence
    assert binary("<answer>7</answer>", finished=False) == 0.0
    assert binary("7") == 0.0


def test_raising_hooks_are_contained():
    def boom(_):
        raise ValueError("bad parser")

    assert rewards.score("logic_rl", "<think></think><answer>1</answer>", parse=boom, check=is_seven) == -1.0
    assert rewards.score("binary", "<answer>1</answer>", parse=boom, check=is_seven) == 0.0


TAGS = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "}", "7", "{", " "])
TEXT = st.one_of(st.text(), st.lists(st.one_of(TAGS, st.text(max_size=5)), max_size=40).map("".join))


@settings(max_examples=2000, deadline=None)
@given(TEXT, st.booleans())
def test_fuzz_never_raises_and_stays_in_range(text, finished):
    assert logic(text) in (3.0, -0.5, -1.0, -3.0)
    assert binary(text, finished) in (0.0, 1.0)


def test_huge_input():
    text = "<think>" + "{" * 200_000 + "\\boxed{" * 10_000 + "</think><answer>7</answer>"
    assert logic(text) == 3.0
    assert binary("\\boxed{" * 50_000) == 0.0
