"""A stand-in for `tailor_jax.sampling.Sampler` that writes scripted completions, for tests of the
evaluator's decode -> score path without a model."""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence

from tailor_jax.data import tokenizer as tok_lib


def scripted_sampler(task, records: Sequence[dict], greedy: Callable[[int], str], sampled: Callable[[int], list[str]],
                     finished: Callable[[int, bool], bool] = lambda i, is_greedy: True):
    """(sampler, tokenizer): the sampler's greedy completion of `records[i]` is `greedy(i)`, its
    samples are `sampled(i)` (one text per sample, as many as the call asks for), and a row ended
    on an end token when `finished(i, is_greedy)`. The tokenizer is a BPE trained on the prompts
    and every scripted text."""
    texts = [task.prompt(r).text for r in records]
    texts += [greedy(i) for i in range(len(records))] + [t for i in range(len(records)) for t in sampled(i)]
    tokenizer = tok_lib.train_bpe_tokenizer(texts, 400, sorted(task.symbols.values()))
    index_of = {tuple(tok_lib.encode_prompt(tokenizer, task.prompt(r))): i for i, r in enumerate(records)}

    def generate(prompts, *, max_new_tokens, temperature, eos_token_ids, num_samples=1, seed=0):
        rows, done = [], []
        for i in (index_of[tuple(p)] for p in prompts):
            row_texts = [greedy(i)] if num_samples == 1 else sampled(i)[:num_samples]
            assert len(row_texts) == num_samples, f"problem {i}: {len(row_texts)} scripted samples, {num_samples} asked"
            rows += [tokenizer.encode(t, add_special_tokens=False) for t in row_texts]
            done += [finished(i, num_samples == 1)] * num_samples
        return types.SimpleNamespace(tokens=rows, finished=done, lengths=[len(r) for r in rows])

    return types.SimpleNamespace(generate=generate), tokenizer
