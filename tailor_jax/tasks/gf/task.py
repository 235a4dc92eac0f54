"""The GF(p) chain `Task`: options, generation, metadata and the record's text."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import CliOption, DatasetConfig, DatasetLevel, Task, parse_level_range
from tailor_jax.tasks.gf.chain import (
    DATASET_RANGES, KINDS, MAX_DRAWS_PER_RECORD, MAX_STEPS, MIN_STEPS, OPS, PRIMES, RENDERERS, STRATEGIES,
    mixed_strategy, render_question, run_chain, symbol_table, unrun_chain,
)
from tailor_jax.tasks.prompt import format_completion


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
    def level_range(self) -> tuple[int, int]:
        """The chain lengths `generate` draws from, uniformly per problem."""
        return self.steps

    def max_distinct(self, level: int) -> int:
        """The distinct problems at `level` steps: kind x given value x (op, nonzero constant) per step."""
        return len(self.kinds) * self.p * (len(OPS) * (self.p - 1)) ** int(level)

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
