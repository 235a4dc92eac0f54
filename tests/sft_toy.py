"""A toy task and tokenizer for the SFT tests (no dependence on the real task generators):
add a list of small numbers, with the running sums as the trace."""

from __future__ import annotations

import numpy as np

from tailor_jax.data.tokenizer import train_bpe_tokenizer
from tailor_jax.tasks.base import Task


class ToySumTask(Task):
    name = "toy_sum"

    def generate(self, num, seed):
        rng = np.random.default_rng(seed)
        for i in range(num):
            terms = [int(x) for x in rng.integers(0, 10, size=int(rng.integers(1, 5)))]
            yield {"task": "toy_sum", "id": f"toy-{seed}-{i}", "terms": terms, "answer": sum(terms)}

    def solve(self, record):
        return sum(record["terms"])

    def difficulty(self, record):
        return len(record["terms"])

    def question(self, record):
        return " + ".join(map(str, record["terms"])) + " = ?"

    def solution_trace(self, record):
        sums = np.cumsum(record["terms"]).tolist()
        return " ".join(map(str, sums))

    def format_answer(self, answer):
        return str(answer)

    def parse_answer(self, text, record):
        try:
            return int(text.strip())
        except ValueError:
            return None


def toy_records(num: int, seed: int = 0) -> list[dict]:
    return list(ToySumTask().generate(num, seed))


def toy_tokenizer(vocab_size: int = 300):
    task = ToySumTask()
    texts = []
    for r in toy_records(200, seed=123):
        texts.append(task.prompt(r).text + task.target(r))
    return train_bpe_tokenizer(texts, vocab_size=vocab_size)
