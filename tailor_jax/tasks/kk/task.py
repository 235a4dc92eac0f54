"""The K&K `Task`: options, generation, metadata and the record's text."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import CliOption, DatasetConfig, DatasetLevel, Task, parse_level_range
from tailor_jax.tasks.kk.logic import (
    MAX_DEPTH, MAX_PEOPLE, MAX_WIDTH, MIN_PEOPLE, assignment_roles, brute_force_solutions, consistent_assignments,
    statement_from_json, statement_to_json,
)
from tailor_jax.tasks.kk.sampling import MAX_DRAWS_PER_RECORD, StatementSampler, Uniform, distinct_problems
from tailor_jax.tasks.kk.text import (
    NAME_POOL, SPEECH_TEMPLATES, assume_and_refute, parse_roles, render_quiz, solution_text, solution_text_format,
)
from tailor_jax.tasks.prompt import format_completion


# --- the task ------------------------------------------------------------------------------
def _int_option(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        value = None  # reject True/False explicitly instead of reading them as 1/0
    try:
        number = int(value)
        if str(number) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise TailorError(f"kk {name} must be an integer in {lo}..{hi}, got {value!r}") from None
    if not lo <= number <= hi:
        raise TailorError(f"kk {name} must lie in {lo}..{hi}, got {number}")
    return number


class KnightsAndKnaves(Task):
    """K&K. Options: people (2..8, or a range "lo-hi" drawn uniformly per record; default 3),
    depth (statement depth limit, 1..8, default 2), width (and/or width limit, 2..8, default 2)."""

    name = "kk"
    level_option = "people"
    level_label = "people"
    key_fields = ("n_people", "statements")
    cli_options = (
        CliOption("people", "number of people, 2..8, or a range such as 3-7"),
        CliOption("depth", "statement depth limit (default 2)", int),
        CliOption("width", "and/or width limit (default 2)", int),
    )

    @classmethod
    def dataset_configs(cls) -> list[DatasetConfig]:
        """`n2`..`n8` (Xie et al. 2024 sizes) and `logic_rl` (train n = 3..7, test n = 2..8)."""
        configs = [
            DatasetConfig(f"n{n}", f"K&K with {n} people (Xie et al. 2024 sizes)",
                          (DatasetLevel({"people": n}, (("test", "test", 100), ("train", "train", 200 if n == 2 else 1000))),))
            for n in range(2, 9)
        ]
        logic_rl = tuple(
            DatasetLevel({"people": n}, ((f"test_n{n}", "test", 100),) + ((("train", "train", 900),) if 3 <= n <= 7 else ()))
            for n in range(2, 9)
        )
        configs.append(DatasetConfig("logic_rl", "Logic-RL: train on n = 3..7 (900 each), test per n = 2..8 (100 each)", logic_rl))
        return configs

    def __init__(self, people: int | str | tuple | list = 3, depth: int | str = 2, width: int | str = 2):
        self.people = parse_level_range(people, "people", MIN_PEOPLE, MAX_PEOPLE)
        self.depth = _int_option(depth, "depth", 1, MAX_DEPTH)
        self.width = _int_option(width, "width", 2, MAX_WIDTH)
        leaves = 2 * self.people[0] - 1  # distinct leaves one speaker can say
        if self.depth >= 2 and self.width > leaves:
            raise TailorError(
                f"kk width {self.width} needs {self.width} distinct clauses but {self.people[0]} people give only "
                f"{leaves}; use width <= {leaves} or more people"
            )

    # --- data -------------------------------------------------------------------------
    def level_range(self) -> tuple[int, int]:
        """The people counts `generate` draws from, uniformly per problem."""
        return self.people

    def max_distinct(self, level: int) -> int | None:
        """The most distinct problems `generate` can give at `level` people (None: too many to count)."""
        return distinct_problems(int(level), self.depth, self.width)

    def generate(self, num: int, seed: int) -> Iterator[dict]:
        """Yield `num` uniquely solvable problems, never repeating a statement tuple."""
        uniform = Uniform(seed)
        samplers = {
            n: StatementSampler(uniform, n, self.depth, self.width) for n in range(self.people[0], self.people[1] + 1)
        }
        seen: set[tuple] = set()
        for index in range(num):
            n = uniform.between(*self.people)
            for _ in range(MAX_DRAWS_PER_RECORD):
                statements = samplers[n].problem()
                consistent = consistent_assignments(statements)
                if consistent.bit_count() == 1 and statements not in seen:
                    break
            else:
                raise TailorError(
                    f"kk found no new uniquely solvable problem in {MAX_DRAWS_PER_RECORD} draws after {index} of {num} "
                    f"(people={n}, depth={self.depth}, width={self.width}); this setting has too few distinct "
                    "problems: ask for fewer, or use more people or a larger depth"
                )
            seen.add(statements)
            yield self._record(f"kk-n{n}-s{seed}-{index}", statements, consistent, uniform)

    def generate_splits(self, seed: int, sizes: Mapping[str, int]) -> dict[str, list[dict]]:
        """Disjoint splits from one sampler, filled in the order given: e.g.
        `generate_splits(0, {"test": 100, "train": 1000})`."""
        for split, count in sizes.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise TailorError(f"kk split {split!r} size must be a non-negative integer, got {count!r}")
        records = self.generate(sum(sizes.values()), seed)
        return {split: list(itertools.islice(records, count)) for split, count in sizes.items()}

    def _record(self, record_id: str, statements: tuple, consistent: int, uniform: Uniform) -> dict:
        n = len(statements)
        names = uniform.sample(NAME_POOL, n)
        templates = [uniform.below(len(SPEECH_TEMPLATES)) for _ in range(n)]
        solution = assignment_roles(consistent.bit_length() - 1, n)
        return {
            "task": "kk",
            "id": record_id,
            "n_people": n,
            "quiz": render_quiz(names, statements, templates),
            "names": names,
            "statements": [statement_to_json(s) for s in statements],
            "solution": solution,
            "solution_text": solution_text(names, solution),
            "solution_text_format": solution_text_format(names, solution),
            "depth": self.depth,
            "width": self.width,
            "answer": list(solution),
        }

    def solve(self, record: dict) -> list[bool]:
        """The unique consistent assignment, by brute force over the record's statements."""
        solutions = brute_force_solutions(record["statements"])
        if len(solutions) != 1:
            raise TailorError(
                f"kk record {record.get('id')!r} has {len(solutions)} consistent assignments; "
                "a K&K problem needs exactly one"
            )
        return solutions[0]

    def difficulty(self, record: dict) -> int:
        return int(record["n_people"])

    # --- text -------------------------------------------------------------------------
    def question(self, record: dict) -> str:
        return record["quiz"]

    def solution_trace(self, record: dict) -> str:
        statements = [statement_from_json(s, len(record["names"])) for s in record["statements"]]
        lines = ["Test the roles one person at a time: assume a role, check every statement whose truth is settled, "
                 "and drop the assumption at the first contradiction."]  # fmt: skip
        return "\n".join(lines + assume_and_refute(record["names"], statements))

    def format_answer(self, answer: Sequence[bool], names: Sequence[str] | None = None) -> str:
        if names is None:
            raise TailorError("kk format_answer needs the names: format_answer(solution, names=record['names'])")
        return solution_text_format(names, answer)

    def parse_answer(self, text: str, record: dict) -> list[bool] | None:
        try:
            return parse_roles(text, record["names"])
        except Exception:  # a grading hook never raises on model output
            return None

    def target(self, record: dict, trace: str | None = None) -> str:
        trace = self.solution_trace(record) if trace is None else trace
        return format_completion(trace, self.format_answer(self.answer(record), names=record["names"]))
