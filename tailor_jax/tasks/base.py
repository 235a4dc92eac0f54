"""The task interface every reasoning task implements.

A task turns a seed into structured records (plain JSON-able dicts), re-derives the ground
truth from a record with an independent solver, renders the question and a canonical
step-by-step solution, and parses/grades model answers. Prompt rendering and the reward
functions are shared (see `prompt.py` and `rewards.py`) and only call the hooks below.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from tailor_jax.errors import TailorError
from tailor_jax.tasks import prompt as prompt_lib
from tailor_jax.tasks import rewards as rewards_lib


@dataclasses.dataclass(frozen=True)
class CliOption:
    """A `tailor-jax generate` flag that sets the task option `option` (`--tag-pool` sets
    `tag_pool`); `type` converts the flag's text, `choices` limits it."""

    option: str
    help: str
    type: type = str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class DatasetLevel:
    """One sampler of a dataset config: task options, and the splits its records fill in order,
    as (split name, role, default count) triples (role "train" or "test")."""

    options: Mapping
    splits: tuple[tuple[str, str, int], ...]


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """A named problem set of a task (a TFDS config, `tailor-jax build-dataset TASK NAME`)."""

    name: str
    description: str
    levels: tuple[DatasetLevel, ...]


class Task(abc.ABC):
    """A verifiable reasoning task. Subclasses are configured by keyword options.

    Besides the hooks below, a task class states its metadata, which the CLI, the datasets,
    evaluation, reports and the Tailor metrics read from it (and from nowhere else):
    `name`, `level_option` (the option that fixes the difficulty level of every record, e.g.
    `people`), `level_label` (the level's column name in tables), `key_fields` (the record
    fields that make up a problem's content, see `content_key`), `cli_options` (the flags of
    `tailor-jax generate`), `trace_variables` (letters in traces that name the problem's own
    unknowns, kept when a step is reduced to its template) and `dataset_configs()`.
    """

    name: ClassVar[str]
    level_option: ClassVar[str]
    level_label: ClassVar[str]
    key_fields: ClassVar[tuple[str, ...]]
    cli_options: ClassVar[tuple[CliOption, ...]] = ()
    trace_variables: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def dataset_configs(cls) -> list[DatasetConfig]:
        """The task's named problem sets (train/test splits per difficulty level)."""
        return []

    @classmethod
    def content_key(cls, record: dict) -> str:
        """The problem's content (its `key_fields`), without surface details such as the id:
        dataset builders use it to keep train and test splits disjoint."""
        return json.dumps([record.get(field) for field in cls.key_fields], sort_keys=True)

    # --- data -------------------------------------------------------------------------
    @abc.abstractmethod
    def generate(self, num: int, seed: int) -> Iterator[dict]:
        """Yield `num` records, deterministic in `seed` (raises TailorError if it cannot)."""

    @abc.abstractmethod
    def solve(self, record: dict) -> Any:
        """Re-derive the answer from the structured record (independent of the generator)."""

    @abc.abstractmethod
    def difficulty(self, record: dict) -> int:
        """The record's difficulty level (KK: people, iGSM: op, GF: steps)."""

    # --- text -------------------------------------------------------------------------
    @abc.abstractmethod
    def question(self, record: dict) -> str:
        """The problem statement shown to the model (no answer-format instructions)."""

    @abc.abstractmethod
    def solution_trace(self, record: dict) -> str:
        """The canonical rule-based chain of thought (the text inside <think>...</think>)."""

    @abc.abstractmethod
    def format_answer(self, answer: Any) -> str:
        """Answer in the text form expected inside <answer>...</answer>."""

    @abc.abstractmethod
    def parse_answer(self, text: str, record: dict) -> Any | None:
        """Parse an answer string (the inside of <answer> or \\boxed{}); None if unparsable.

        Must never raise and never evaluate the text.
        """

    # --- derived, shared by all tasks ---------------------------------------------------
    def answer(self, record: dict) -> Any:
        """The stored ground-truth answer of a record."""
        return record["answer"]

    def is_correct(self, record: dict, answer: Any) -> bool:
        return answer is not None and answer == self.answer(record)

    def target(self, record: dict, trace: str | None = None) -> str:
        """A full assistant completion: <think>trace</think> then <answer>...</answer>."""
        trace = self.solution_trace(record) if trace is None else trace
        return prompt_lib.format_completion(trace, self.format_answer(self.answer(record)))

    def prompt(self, record: dict, *, style: str = "plain", think_prefill: bool = False):
        return prompt_lib.render_prompt(self.question(record), style=style, think_prefill=think_prefill)

    def reward(self, fn: str, record: dict, completion: str, *, finished: bool = True) -> float:
        """Score a completion (the full assistant text, including any prefill)."""
        parse = lambda s: self.parse_answer(s, record)  # noqa: E731
        check = lambda a: self.is_correct(record, a)  # noqa: E731
        return rewards_lib.score(fn, completion, parse=parse, check=check, finished=finished)


def parse_level_range(value: int | str | tuple | list, name: str, lo: int, hi: int) -> tuple[int, int]:
    """Parse a difficulty option given as an int, "k", "lo-hi" or (lo, hi), within [lo, hi]."""
    try:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            a, b = int(value[0]), int(value[1])
        elif isinstance(value, str) and "-" in value.strip()[1:]:
            left, right = value.strip().split("-", 1)
            a, b = int(left), int(right)
        else:
            a = b = int(value)
    except (TypeError, ValueError):
        raise TailorError(f"{name} must be an integer or a range such as {lo}-{hi}, got {value!r}") from None
    if not lo <= a <= b <= hi:
        raise TailorError(f"{name} must lie in {lo}..{hi} (as k or lo-hi with lo <= hi), got {value!r}")
    return a, b


def problem_key(record: dict) -> str:
    """Identity of a problem regardless of its id or demonstration (held-out sets exclude
    training problems by it)."""
    return json.dumps({k: v for k, v in record.items() if k not in ("id", "completion", "primitive")}, sort_keys=True)
