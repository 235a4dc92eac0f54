"""The sampler: one compiled program per shape bucket runs prefill and the whole decode loop.

Layout of one call (all inside a single jitted program, no host round trip per token):
  1. prefill the B distinct prompts (left-padded to a length bucket) into a KV cache;
  2. group sampling: repeat the prefilled cache and the last-position logits G times along the
     batch axis (each prompt is prefilled once, its G rows share the copy made from it);
  3. decode with `lax.while_loop` until every row is done or `max_new_tokens` is reached. The
     loop runs in a few segments whose cache capacity grows (prompt + steps so far), so attention
     reads only about the filled part of the cache; the cache is loop-carried, so XLA updates it in
     place, and never leaves the program.

Programs are cached by (batch bucket, prompt bucket, new-token bucket, G, sampling mode, weight
signature): temperature, top_p, seed, max_new_tokens and the weights themselves are runtime
arguments, so new weights every GRPO step cost no recompilation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from tailor_jax.errors import TailorError
from tailor_jax.model import KVCache, Transformer, init_cache
from tailor_jax.parallel.sharding import Rules, constrain, logical_sharding, put_global, use_sharding
from tailor_jax.sampling.decode import (
    decode_step, empty_completion_cache, grow_completion_cache, prompt_cache_from_model_cache,
)
from tailor_jax.sampling.buckets import bucket, check_prompts, pad_prompts, stop_sequence_array
from tailor_jax.sampling.ops import SamplingParams, sample_tokens

log = logging.getLogger(__name__)

_NO_TOKEN = -2  # fills the recent-token window before anything was generated; matches no stop sequence


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Completions grouped by prompt: rows [i * num_samples, (i + 1) * num_samples) belong to prompt i.

    `tokens[j]` excludes the prompt and includes the stop token (EOS / last token of a stop
    sequence) when the row finished; `logprobs[j][t]` is log softmax(logits / T)[token] over the
    full vocabulary (T = 1 for greedy). `finished[j]` is False when the row was cut by
    max_new_tokens. The padded arrays hold the same data as [rows, max_new_tokens] NumPy arrays
    (tokens padded with `pad_id`, log-probs with 0).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    lengths: list[int]
    finished: list[bool]
    num_samples: int
    token_array: np.ndarray
    logprob_array: np.ndarray
    seconds: float

    @property
    def num_tokens(self) -> int:
        return int(sum(self.lengths))


def _segment_ends(steps: int, max_segments: int) -> tuple[int, ...]:
    """Ends of the decode segments (cache capacity grows at each); short runs use one segment."""
    count = max(1, min(max_segments, steps // 32))
    return tuple(steps * (i + 1) // count for i in range(count))


def _grow_cache(cache: KVCache, capacity: int) -> KVCache:
    extra = capacity - cache.mask.shape[1]
    if extra <= 0:
        return cache
    pad_kv = ((0, 0), (0, 0), (0, extra), (0, 0), (0, 0))
    return KVCache(
        k=jnp.pad(cache.k, pad_kv),
        v=jnp.pad(cache.v, pad_kv),
        mask=jnp.pad(cache.mask, ((0, 0), (0, extra))),
        index=cache.index,
    )


def _constrain_cache(cache: KVCache) -> KVCache:
    kv_axes = (None, "batch", "cache_length", "act_kv_heads", None)
    return KVCache(
        k=constrain(cache.k, kv_axes),
        v=constrain(cache.v, kv_axes),
        mask=constrain(cache.mask, ("batch", "cache_length")),
        index=cache.index,
    )


def _repeat_rows(x: jax.Array, times: int, axis: int) -> jax.Array:
    return x if times == 1 else jnp.repeat(x, times, axis=axis)


def _stop_hit(window: jax.Array, stop_sequences: jax.Array) -> jax.Array:
    """Rows whose recent tokens `window` [R, W] end with one of `stop_sequences` [S, W] (-1 = wildcard)."""
    wildcard = stop_sequences < 0
    equal = (window[:, None, :] == stop_sequences[None, :, :]) | wildcard[None]
    real = jnp.any(~wildcard, axis=-1)[None]
    return jnp.any(jnp.all(equal, axis=-1) & real, axis=-1)


def _sample_program(
    graphdef: Any,
    state: Any,
    tokens: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    prompt_lengths: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    max_new_tokens: jax.Array,
    eos_ids: jax.Array,
    stop_sequences: jax.Array,
    *,
    num_samples: int,
    new_token_bucket: int,
    segment_ends: tuple[int, ...],
    params: SamplingParams,
    pad_id: int,
    share_prompt_cache: bool,
):
    """Prefill + grouped decode. Returns tokens [R, N], log-probs [R, N], lengths [R], finished [R]."""
    model = nnx.merge(graphdef, state)
    batch, prompt_len = tokens.shape
    rows = batch * num_samples
    window = stop_sequences.shape[1]

    first_capacity = prompt_len if share_prompt_cache else prompt_len + segment_ends[0]
    cache = _constrain_cache(init_cache(model.config, batch, first_capacity))
    hidden, cache = model(tokens, positions, attention_mask=mask, cache=cache, return_hidden=True)
    logits = _repeat_rows(model.logits(hidden[:, -1:])[:, 0], num_samples, 0)
    lengths_in = _repeat_rows(prompt_lengths, num_samples, 0)
    if share_prompt_cache:
        prompt_cache = prompt_cache_from_model_cache(cache.k, cache.v, cache.mask)
        weights = model.fused_decode_weights()
        cache = empty_completion_cache(model, rows, segment_ends[0], cache.k.dtype)
    else:
        cache = KVCache(
            k=_repeat_rows(cache.k, num_samples, 1),
            v=_repeat_rows(cache.v, num_samples, 1),
            mask=_repeat_rows(cache.mask, num_samples, 0),
            index=cache.index,
        )

    def choose(step, logits, carry):
        """Sample the token of `step` for every row and fold it into the carry."""
        out_tokens, out_logprobs, lengths, finished, done, recent = carry
        uniform = jax.random.uniform(jax.random.fold_in(key, step), (rows,), jnp.float32)
        token, logprob = sample_tokens(logits, uniform, params, temperature, top_p)
        token = jnp.where(done, pad_id, token)
        logprob = jnp.where(done, 0.0, logprob)
        out_tokens = jax.lax.dynamic_update_slice(out_tokens, token[:, None], (0, step))
        out_logprobs = jax.lax.dynamic_update_slice(out_logprobs, logprob[:, None], (0, step))
        recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
        stopped = jnp.any(token[:, None] == eos_ids[None, :], axis=-1) | _stop_hit(recent, stop_sequences)
        stopped = stopped & ~done
        lengths = lengths + (~done).astype(jnp.int32)
        finished = finished | stopped
        done = done | stopped | (step + 1 >= max_new_tokens)
        return token, (out_tokens, out_logprobs, lengths, finished, done, recent)

    carry = (
        jnp.full((rows, new_token_bucket), pad_id, jnp.int32),
        jnp.zeros((rows, new_token_bucket), jnp.float32),
        jnp.zeros((rows,), jnp.int32),
        jnp.zeros((rows,), jnp.bool_),
        lengths_in == 0,  # filler rows are done from the start
        jnp.full((rows, window), _NO_TOKEN, jnp.int32),
    )
    token, carry = choose(0, logits, carry)

    def body(loop):
        step, token, cache, carry = loop
        position = lengths_in + step - 1
        if share_prompt_cache:
            logits, cache = decode_step(model, weights, token, position, prompt_cache, cache)
        else:
            hidden, cache = model(token[:, None], position[:, None], attention_mask=jnp.ones((rows, 1), jnp.bool_),
                                  cache=cache, return_hidden=True)
            logits = model.logits(hidden)[:, 0]
        token, carry = choose(step, logits, carry)
        return step + 1, token, cache, carry

    step = jnp.ones((), jnp.int32)
    for end in segment_ends:
        if share_prompt_cache:
            cache = grow_completion_cache(cache, end)
        else:
            cache = _constrain_cache(_grow_cache(cache, prompt_len + end))

        def keep_going(loop, end=end):
            step, _, _, carry = loop
            return (step < jnp.minimum(end, max_new_tokens)) & ~jnp.all(carry[4])

        step, token, cache, carry = jax.lax.while_loop(keep_going, body, (step, token, cache, carry))
    out_tokens, out_logprobs, lengths, finished, _, _ = carry
    return out_tokens, out_logprobs, lengths, finished


def _encode(tokenizer: Any, text: str) -> list[int]:
    if not isinstance(text, str) or not text:
        raise TailorError(f"stop string {text!r} must be a non-empty string")
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))


def _stop_string_cut(tokenizer: Any, tokens: list[int], stop_strings: Sequence[str]) -> int | None:
    """Fewest leading tokens whose decoded text contains a stop string (None if the full text has none)."""
    def hit(n: int) -> bool:
        text = tokenizer.decode(tokens[:n])
        return any(s in text for s in stop_strings)

    if not tokens or not hit(len(tokens)):
        return None
    low, high = 0, len(tokens)  # hit(high) is True; hit(0) is False (empty text)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if hit(mid) else (mid, high)
    return high


def _leaf_signature(x: Any) -> tuple:
    return (tuple(np.shape(x)), str(getattr(x, "dtype", type(x))), _sharding_signature(x))


def _sharding_signature(x: Any) -> str:
    """Equal for equivalent placements: a jitted update returns P() where the loader placed
    P(None, None), and the two must not cost a recompilation."""
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (np.ndim(x) - len(sharding.spec))
        return f"{sharding.mesh}:{spec}:{sharding.memory_kind}"
    return str(sharding)


class Sampler:
    """Reusable sampler for one model architecture; keeps its compiled programs across calls.

    `update_weights(model_or_state)` swaps the weights without recompiling (same shapes). With a
    `mesh`, prompts are sharded over the mesh axes that the rules map "batch" to, and the model's
    activation constraints are active while tracing.
    """

    def __init__(
        self,
        model: Transformer,
        *,
        mesh: Mesh | None = None,
        rules: Rules | None = None,
        pad_id: int | None = None,
        min_prompt_bucket: int = 16,
        min_new_token_bucket: int = 16,
        max_segments: int = 4,
        share_prompt_cache: bool = True,
    ):
        self.config = model.config
        self.mesh = mesh
        self.rules = rules
        self.pad_id = int(pad_id if pad_id is not None else (self.config.pad_token_id or 0))
        self.min_prompt_bucket = min_prompt_bucket
        self.min_new_token_bucket = min_new_token_bucket
        self.max_segments = max_segments
        self.share_prompt_cache = share_prompt_cache
        self._programs: dict[tuple, Any] = {}
        self._context_warned: set[tuple[int, int]] = set()
        self.graphdef, self.state = nnx.split(model)

    @property
    def num_compiles(self) -> int:
        """How many programs this sampler compiled so far."""
        return len(self._programs)

    def update_weights(self, model_or_state: Transformer | nnx.State) -> None:
        """Use new weights (a model of the same architecture, or its `nnx.State`) from the next call on."""
        if isinstance(model_or_state, nnx.Module):
            graphdef, state = nnx.split(model_or_state)
            if graphdef != self.graphdef:
                raise TailorError("update_weights: the model's structure differs from the sampler's; build a new Sampler")
        else:
            state = model_or_state
        self.state = state

    def _warn_past_context(self, longest: int, max_new_tokens: int) -> None:
        """A warning (once per prompt length bucket and budget) when a generation may run past the
        model's max_position_embeddings. Not an error: the budget is a cap that most generations do
        not reach, but tokens past it sit at positions the model was not trained on. (The run plan
        stops a budget that alone exceeds it.)"""
        key = (bucket(longest, minimum=self.min_prompt_bucket), max_new_tokens)
        limit = self.config.max_position_embeddings
        if longest + max_new_tokens > limit and key not in self._context_warned:
            self._context_warned.add(key)
            log.warning("sampler: prompts of up to %d tokens + max_new_tokens %d = %d positions, more than the model's "
                        "max_position_embeddings (%d): a generation that long runs past the positions the model was "
                        "trained on; lower the generation budget or the prompts", longest, max_new_tokens,
                        longest + max_new_tokens, limit)

    def _batch_multiple(self) -> int:
        if self.mesh is None:
            return 1
        spec = logical_sharding(("batch",), self.mesh, self.rules).spec[0]
        names = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
        return int(np.prod([self.mesh.shape[n] for n in names])) if names else 1

    def _put(self, x: np.ndarray, axes: tuple[str | None, ...]) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        return put_global(x, self.mesh, axes, self.rules)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        num_samples: int = 1,
        eos_token_ids: Sequence[int] | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
        stop_strings: Sequence[str] = (),
        tokenizer: Any = None,
        seed: int | jax.Array = 0,
    ) -> SampleOutput:
        """Sample `num_samples` completions per prompt. See `SampleOutput` for what comes back.

        `eos_token_ids=None` uses the model config's EOS ids, `[]` never stops on EOS;
        `stop_sequences` are token-id sequences that end a row when its completion ends with one.
        `stop_strings` (with the `tokenizer`, anything with HF-style `encode`/`decode`) end a row at
        the first token whose decoded completion contains one: their own tokenization stops the
        decode loop early, any other tokenization is caught when the result is assembled.
        """
        start = time.perf_counter()
        cfg = self.config
        params = SamplingParams(temperature=float(temperature), top_k=top_k, top_p=top_p)
        prompts = check_prompts(prompts, cfg.vocab_size)
        if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
            raise TailorError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
        if int(num_samples) != num_samples or num_samples < 1:
            raise TailorError(f"num_samples must be a positive integer, got {num_samples}")
        max_new_tokens, num_samples = int(max_new_tokens), int(num_samples)
        eos = list(cfg.eos_token_ids if eos_token_ids is None else eos_token_ids)
        if any(not 0 <= int(t) < cfg.vocab_size for t in eos):
            raise TailorError(f"eos_token_ids {eos} must lie in the vocabulary [0, {cfg.vocab_size})")

        longest = max(len(p) for p in prompts)
        self._warn_past_context(longest, max_new_tokens)
        batch = bucket(len(prompts), minimum=1, multiple=self._batch_multiple())
        prompt_len = bucket(longest, minimum=self.min_prompt_bucket)
        new_tokens = bucket(max_new_tokens, minimum=self.min_new_token_bucket)
        padded = pad_prompts(prompts, prompt_len, batch, self.pad_id)
        eos_array = np.full((bucket(len(eos), minimum=4),), -1, np.int32)
        eos_array[: len(eos)] = eos
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        if stop_strings and tokenizer is None:
            raise TailorError("stop_strings need a tokenizer (pass tokenizer=...) or give stop_sequences as token ids")
        stop_sequences = list(stop_sequences) + [_encode(tokenizer, text) for text in stop_strings]
        stops = stop_sequence_array(stop_sequences)
        stops = np.pad(stops, ((0, bucket(stops.shape[0], 1) - stops.shape[0]),
                               (bucket(stops.shape[1], 1) - stops.shape[1], 0)), constant_values=-1)
        key = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed

        args = (
            self.state,
            self._put(padded.tokens, ("batch", "length")),
            self._put(padded.positions, ("batch", "length")),
            self._put(padded.mask, ("batch", "length")),
            self._put(padded.lengths, ("batch",)),
            key,
            jnp.float32(params.temperature if params.temperature > 0 else 1.0),
            jnp.float32(1.0 if top_p is None else top_p),
            jnp.int32(max_new_tokens),
            jnp.asarray(eos_array),
            jnp.asarray(stops),
        )
        program = self._program(args, batch, prompt_len, new_tokens, num_samples, params)
        outputs = program(*args)
        if not all(x.is_fully_addressable for x in outputs):  # several processes: every host gets all rows
            outputs = multihost_utils.process_allgather(outputs, tiled=True)
        out_tokens, out_logprobs, lengths, finished = jax.device_get(outputs)

        rows = len(prompts) * num_samples
        lengths = lengths[:rows].copy()
        finished = finished[:rows].copy()
        token_array = out_tokens[:rows, :max_new_tokens].copy()
        logprob_array = out_logprobs[:rows, :max_new_tokens].copy()
        if stop_strings:
            for r in range(rows):
                cut = _stop_string_cut(tokenizer, token_array[r, : lengths[r]].tolist(), stop_strings)
                if cut is not None and (cut < lengths[r] or not finished[r]):
                    lengths[r], finished[r] = cut, True
                    token_array[r, cut:], logprob_array[r, cut:] = self.pad_id, 0.0
        return SampleOutput(
            tokens=[token_array[r, : lengths[r]].tolist() for r in range(rows)],
            logprobs=[logprob_array[r, : lengths[r]].tolist() for r in range(rows)],
            lengths=lengths.tolist(),
            finished=finished.tolist(),
            num_samples=num_samples,
            token_array=token_array,
            logprob_array=logprob_array,
            seconds=time.perf_counter() - start,
        )

    def _program(self, args, batch, prompt_len, new_tokens, num_samples, params):
        state_leaves, state_tree = jax.tree.flatten(args[0])
        signature = (
            batch, prompt_len, new_tokens, num_samples, params.program_key(self.config.vocab_size),
            state_tree, tuple(_leaf_signature(x) for x in state_leaves),
            tuple(_leaf_signature(x) for x in args[1:]),
        )
        program = self._programs.get(signature)
        if program is None:
            segments = _segment_ends(new_tokens, self.max_segments)
            fn = functools.partial(
                _sample_program, self.graphdef, num_samples=num_samples, new_token_bucket=new_tokens,
                segment_ends=segments, params=params, pad_id=self.pad_id,
                share_prompt_cache=self.share_prompt_cache,
            )
            begin = time.perf_counter()
            with use_sharding(self.mesh, self.rules) if self.mesh is not None else contextlib.nullcontext():
                program = jax.jit(fn).lower(*args).compile()
            self._programs[signature] = program
            log.info(
                "sampler: compiled program %d (batch=%d prompt_len=%d new_tokens=%d samples=%d mode=%s) in %.1fs",
                len(self._programs), batch, prompt_len, new_tokens, num_samples,
                params.program_key(self.config.vocab_size), time.perf_counter() - begin,
            )
        return program


_SAMPLERS: dict[int, tuple[Any, Sampler]] = {}


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_samples: int = 1,
    eos_token_ids: Sequence[int] | None = None,
    stop_sequences: Sequence[Sequence[int]] = (),
    stop_strings: Sequence[str] = (),
    tokenizer: Any = None,
    seed: int | jax.Array = 0,
) -> SampleOutput:
    """Sample completions of token-id `prompts` with `model` (see `Sampler.generate`).

    Keeps one `Sampler` per model object, so repeated calls reuse compiled programs and pick up
    the model's current weights.
    """
    entry = _SAMPLERS.get(id(model))
    sampler = entry[1] if entry is not None and entry[0]() is model else None
    if sampler is None:
        sampler = Sampler(model)
        _SAMPLERS[id(model)] = (weakref.ref(model), sampler)
    else:
        sampler.update_weights(model)
    return sampler.generate(
        prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        num_samples=num_samples, eos_token_ids=eos_token_ids, stop_sequences=stop_sequences,
        stop_strings=stop_strings, tokenizer=tokenizer, seed=seed,
    )
