"""Sampler tests: sampling math against NumPy/SciPy, HF greedy parity, trainer log-prob parity, buckets."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from jax.sharding import NamedSharding, PartitionSpec as P

from tailor_jax.errors import TailorError
from tailor_jax.parallel.mesh import MeshConfig, create_mesh
from tailor_jax.sampling import ops
from tailor_jax.sampling.buckets import bucket, pad_prompts, stop_sequence_array

# ---------------------------------------------------------------- pure sampling math


def _numpy_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _chi_square_p(observed: np.ndarray, probs: np.ndarray) -> float:
    """p-value of observed counts against probabilities (renormalised in float64)."""
    probs = np.asarray(probs, np.float64)
    return float(stats.chisquare(observed, probs / probs.sum() * observed.sum()).pvalue)


@pytest.fixture(scope="module")
def draw():
    """A jitted sampler of `rows` i.i.d. draws from one row of logits (compiled once per params)."""

    cache = {}

    def run(logits_row: np.ndarray, params: ops.SamplingParams, rows: int, seed: int = 0):
        key = (params, rows, logits_row.shape)
        if key not in cache:
            cache[key] = jax.jit(lambda l, k: ops.sample_tokens(
                jnp.broadcast_to(l, (rows, l.shape[-1])), jax.random.uniform(k, (rows,)), params))
        tokens, logprobs = cache[key](jnp.asarray(logits_row), jax.random.key(seed))
        return np.asarray(tokens), np.asarray(logprobs)

    return run


def test_sampling_frequencies_match_softmax_chi_square(draw):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=12).astype(np.float32) * 1.5
    temperature = 0.7
    params = ops.SamplingParams(temperature=temperature)
    tokens, logprobs = draw(logits, params, 40_000, seed=1)
    probs = np.exp(_numpy_log_softmax(logits / temperature))
    observed = np.bincount(tokens, minlength=12)
    assert _chi_square_p(observed, probs) > 1e-3, (observed, probs * len(tokens))
    # The returned log-prob is that of the temperature-scaled distribution, per token.
    np.testing.assert_allclose(logprobs, np.log(probs)[tokens], rtol=0, atol=1e-5)


def test_sampling_chi_square_detects_a_wrong_distribution(draw):
    """The chi-square check has power: the same draws fail against the untempered softmax."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=12).astype(np.float32) * 1.5
    tokens, _ = draw(logits, ops.SamplingParams(temperature=0.7), 40_000, seed=1)
    wrong = np.exp(_numpy_log_softmax(logits))
    assert _chi_square_p(np.bincount(tokens, minlength=12), wrong) < 1e-6


def test_inverse_cdf_over_several_blocks_matches_weights():
    """A vocabulary wider than one block (with a ragged last block and zero weights)."""
    rng = np.random.default_rng(1)
    vocab = 300
    weights = rng.random(vocab).astype(np.float32) ** 4
    weights[rng.random(vocab) < 0.5] = 0.0
    rows = 60_000
    sample = jax.jit(lambda w, k: ops.inverse_cdf_sample(jnp.broadcast_to(w, (rows, vocab)),
                                                         jax.random.uniform(k, (rows,))))
    tokens = np.asarray(sample(jnp.asarray(weights), jax.random.key(3)))
    assert np.all(weights[tokens] > 0)
    expected = weights / weights.sum() * rows
    observed = np.bincount(tokens, minlength=vocab)
    big = expected > 20  # chi-square needs expected counts that are not tiny: pool the rest
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    assert _chi_square_p(obs, exp) > 1e-3


def test_inverse_cdf_edge_uniforms_never_pick_zero_weight():
    weights = jnp.array([[0.0, 1.0, 0.0, 2.0, 0.0]] * 4, jnp.float32)
    uniform = jnp.array([0.0, 1.0 - 1e-7, 0.3333333, 0.9999999], jnp.float32)
    tokens = np.asarray(ops.inverse_cdf_sample(weights, uniform))
    assert set(tokens.tolist()) <= {1, 3}
    assert tokens[0] == 1 and tokens[1] == 3


@pytest.mark.parametrize(
    "params",
    [
        ops.SamplingParams(temperature=1.0, top_k=3),
        ops.SamplingParams(temperature=2.0, top_p=0.8),
        ops.SamplingParams(temperature=2.0, top_k=6, top_p=0.7),
    ],
    ids=["top_k", "top_p", "top_k+top_p"],
)
def test_top_k_top_p_stay_inside_allowed_set_and_keep_proportions(draw, params):
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=16) * 2).astype(np.float32)
    tokens, logprobs = draw(logits, params, 20_000, seed=4)
    allowed = np.asarray(ops.allowed_tokens_mask(jnp.asarray(logits)[None], params))[0]
    assert 2 <= allowed.sum() < 16  # the filter binds and leaves a choice
    assert np.all(allowed[tokens]), f"emitted {sorted(set(tokens[~allowed[tokens]]))} outside {np.flatnonzero(allowed)}"
    # Inside the allowed set, draws follow the renormalised tempered softmax.
    probs = np.exp(_numpy_log_softmax(logits / params.temperature))
    observed = np.bincount(tokens, minlength=16)
    assert _chi_square_p(observed[allowed], probs[allowed]) > 1e-3
    # Log-probs are of the full tempered distribution (what the trainer recomputes), not the truncated one.
    np.testing.assert_allclose(logprobs, np.log(probs)[tokens], atol=1e-5)


def test_top_p_threshold_matches_sorted_reference():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(50, 0.3), size=8).astype(np.float32)
    for top_p in (0.05, 0.5, 0.9, 0.999):
        threshold = np.asarray(ops.top_p_threshold(jnp.asarray(probs), jnp.float32(top_p)))
        for row in range(8):
            order = np.sort(probs[row])[::-1]
            keep = int(np.searchsorted(np.cumsum(order), top_p, side="left")) + 1  # smallest prefix with mass >= p
            assert (probs[row] >= threshold[row]).sum() == min(keep, 50), (top_p, row)


def test_greedy_matches_argmax_with_ties_and_reports_untempered_logprob():
    logits = jnp.array([[1.0, 3.0, 3.0, -1.0], [0.5, 0.1, 0.2, 0.7]], jnp.float32)
    tokens, logprobs = ops.sample_tokens(logits, jnp.zeros((2,)), ops.SamplingParams())
    np.testing.assert_array_equal(np.asarray(tokens), [1, 3])
    np.testing.assert_allclose(np.asarray(logprobs),
                               _numpy_log_softmax(np.asarray(logits))[[0, 1], [1, 3]], atol=1e-6)


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(temperature=1.0, top_k=0),
                                 dict(temperature=1.0, top_p=0.0), dict(temperature=1.0, top_p=1.5)])
def test_bad_sampling_params_raise_one_line(bad):
    with pytest.raises(TailorError) as err:
        ops.SamplingParams(**bad)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- buckets and padding


def test_bucket_sizes():
    assert [bucket(n) for n in (1, 16, 17, 64, 65)] == [16, 16, 32, 64, 128]
    assert bucket(3, minimum=1) == 4
    assert bucket(5, minimum=1, multiple=8) == 8
    assert bucket(9, minimum=1, multiple=8) == 16
    assert bucket(3, minimum=1, multiple=6) == 6


def test_pad_prompts_left_pads_and_fills_rows():
    batch = pad_prompts([[5, 6, 7], [9]], length=4, batch=3, pad_id=0)
    np.testing.assert_array_equal(batch.tokens, [[0, 5, 6, 7], [0, 0, 0, 9], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(batch.positions[0, 1:], [0, 1, 2])
    np.testing.assert_array_equal(batch.positions[1, 3], 0)
    np.testing.assert_array_equal(batch.lengths, [3, 1, 0])


def test_stop_sequence_array_right_aligns():
    array = stop_sequence_array([[4, 5], [7]])
    np.testing.assert_array_equal(array, [[4, 5], [-1, 7]])
    with pytest.raises(TailorError):
        stop_sequence_array([[]])


# ---------------------------------------------------------------- the sampler on real models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tailor_jax.model import load_pretrained  # noqa: E402
from tailor_jax.model.logprobs import logprobs_from_logits as token_logprobs  # noqa: E402
from tailor_jax.sampling import Sampler, generate  # noqa: E402

HF_EOS = 3
PROMPTS = [[5, 17, 33, 2, 60, 7, 91], [12, 4], [100, 101, 102, 9, 8, 70, 71, 72, 73, 74, 75], [50]]


def _save_hf(kind: str, directory) -> None:
    torch.manual_seed(0)
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, initializer_range=0.2, eos_token_id=HF_EOS, pad_token_id=0)
    if kind == "qwen2":
        config = transformers.Qwen2Config(tie_word_embeddings=True, rope_theta=10000.0, **common)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(tie_word_embeddings=False, rope_theta=500000.0, **common)
        model = transformers.LlamaForCausalLM(config)
    model.eval().save_pretrained(directory)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    _save_hf(request.param, directory)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model = load_pretrained(directory)
    return hf_model, model, Sampler(model)


def _hf_greedy(hf_model, prompts, max_new_tokens, eos):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                eos_token_id=eos, pad_token_id=0)
    rows = []
    for row in out[:, width:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        rows.append(row)
    return rows


def test_greedy_equals_hf_generate_with_mixed_lengths_and_eos_stops(checkpoint):
    hf_model, _, sampler = checkpoint
    free_run = _hf_greedy(hf_model, PROMPTS, 20, None)
    ours_free = sampler.generate(PROMPTS, max_new_tokens=20, eos_token_ids=[])
    assert ours_free.tokens == free_run
    assert ours_free.finished == [False] * 4 and ours_free.lengths == [20] * 4
    # An EOS id that the free run emits mid-way in some row (its first occurrence there ends the row).
    eos = next(row[5] for row in free_run if row[5] not in row[:5])
    expected = _hf_greedy(hf_model, PROMPTS, 20, eos)
    ours = sampler.generate(PROMPTS, max_new_tokens=20, eos_token_ids=[eos])
    assert ours.tokens == expected
    assert any(len(row) < 20 for row in expected)
    assert ours.finished == [row[-1] == eos for row in expected]
    assert ours.lengths == [len(row) for row in expected]
    assert sampler.num_compiles == 1  # the same bucket served all three calls


def _trainer_logprobs(model, prompts, completions, temperature):
    """Log-probs of each completion under one plain forward pass over prompt + completion (right padded)."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    tokens = np.array([s + [0] * (width - len(s)) for s in seqs], np.int32)
    logits, _ = model(jnp.asarray(tokens))
    logp = np.asarray(token_logprobs(logits[:, :-1], jnp.asarray(tokens[:, 1:]), temperature))
    return [logp[i, len(p) - 1: len(p) - 1 + len(c)] for i, (p, c) in enumerate(zip(prompts, completions))]


def test_grouped_sampling_logprobs_equal_trainer_forward(checkpoint):
    _, model, sampler = checkpoint
    out = sampler.generate(PROMPTS, max_new_tokens=24, temperature=0.7, top_k=40, num_samples=3,
                           eos_token_ids=[HF_EOS], seed=7)
    assert len(out.tokens) == len(PROMPTS) * 3 and out.num_samples == 3
    grouped_prompts = [p for p in PROMPTS for _ in range(3)]
    expected = _trainer_logprobs(model, grouped_prompts, out.tokens, 0.7)
    for got, want in zip(out.logprobs, expected):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    for row, length, done in zip(out.tokens, out.lengths, out.finished):
        assert len(row) == length and done == (row[-1] == HF_EOS) and (done or length == 24)
    # The G rows of one prompt are distinct draws, and the same seed reproduces the call.
    assert len({tuple(r) for r in out.tokens[:3]}) > 1
    again = sampler.generate(PROMPTS, max_new_tokens=24, temperature=0.7, top_k=40, num_samples=3,
                             eos_token_ids=[HF_EOS], seed=7)
    assert again.tokens == out.tokens
    assert np.array_equal(out.token_array[:, :5], np.array([r[:5] + [0] * (5 - len(r[:5])) for r in out.tokens]))


@pytest.fixture(scope="module")
def tiny():
    """A small random model of our own (no HF) for the engine's bookkeeping tests."""
    from tailor_jax.model import create_model, get_preset

    config = get_preset("tiny").replace(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                                        num_heads=2, num_kv_heads=1, head_dim=16, eos_token_ids=(1,))
    model = create_model(config, seed=1)
    return model, Sampler(model)


def test_stop_sequences_end_rows_and_eos_defaults(tiny):
    _, sampler = tiny
    prompts = [[5, 6, 7], [9, 10]]
    free = sampler.generate(prompts, max_new_tokens=12, eos_token_ids=[])
    row = free.tokens[0]
    stop = row[3:5]
    first = next(i for i in range(1, len(row)) if row[i - 1: i + 1] == stop)
    out = sampler.generate(prompts, max_new_tokens=12, eos_token_ids=[], stop_sequences=[stop, [63, 62, 61]])
    assert out.tokens[0] == row[: first + 1] and out.finished[0]
    # eos_token_ids=None means the config's EOS ids (here 1).
    default = sampler.generate(prompts, max_new_tokens=12)
    for full, got in zip(free.tokens, default.tokens):
        expected = full[: full.index(1) + 1] if 1 in full else full
        assert got == expected


def test_compilations_are_bucketed_counted_and_logged(tiny, caplog):
    model, _ = tiny
    sampler = Sampler(model)
    with caplog.at_level(logging.INFO, logger="tailor_jax.sampling.engine"):
        sampler.generate([[1, 2, 3]], max_new_tokens=5, temperature=1.0, seed=0)
        sampler.generate([[4, 5, 6, 7, 8, 9, 10]], max_new_tokens=9, temperature=0.5, seed=1)
        assert sampler.num_compiles == 1  # same buckets, new temperature / seed / lengths
        sampler.generate([list(range(1, 40))], max_new_tokens=9, temperature=0.5, seed=1)
        assert sampler.num_compiles == 2  # a longer prompt is a new bucket
    assert sum("compiled program" in r.getMessage() for r in caplog.records) == 2
    # New weights of the same shapes: no recompilation, different output.
    before = sampler.generate([[4, 5, 6]], max_new_tokens=8, eos_token_ids=[])
    assert sampler.num_compiles == 3  # greedy is its own program
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x * 1.5, state)
    sampler.update_weights(state)
    after = sampler.generate([[4, 5, 6]], max_new_tokens=8, eos_token_ids=[])
    assert sampler.num_compiles == 3 and after.tokens != before.tokens
    reference = Sampler(nnx.merge(graphdef, state)).generate([[4, 5, 6]], max_new_tokens=8, eos_token_ids=[])
    assert after.tokens == reference.tokens


def test_equivalent_weight_placements_share_a_program(tiny):
    # A jitted optimizer update returns P() where the loader placed P(None, None): same placement.
    model, _ = tiny
    mesh_cfg = MeshConfig()
    mesh = create_mesh(mesh_cfg)
    graphdef, state = nnx.split(model)
    place = lambda spec: jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), state)
    sampler = Sampler(nnx.merge(graphdef, place(lambda x: P(*[None] * x.ndim))), mesh=mesh, rules=mesh_cfg.axis_rules())
    before = sampler.generate([[4, 5, 6]], max_new_tokens=8, eos_token_ids=[])
    sampler.update_weights(place(lambda x: P()))
    after = sampler.generate([[4, 5, 6]], max_new_tokens=8, eos_token_ids=[])
    assert sampler.num_compiles == 1 and after.tokens == before.tokens


def test_module_level_generate_reuses_its_sampler(tiny):
    model, sampler = tiny
    first = generate(model, [[3, 4]], max_new_tokens=4, eos_token_ids=[])
    second = generate(model, [[3, 4]], max_new_tokens=4, eos_token_ids=[])
    assert first.tokens == second.tokens == sampler.generate([[3, 4]], max_new_tokens=4, eos_token_ids=[]).tokens


@pytest.mark.parametrize("bad, message", [
    (dict(prompts=[]), "non-empty"),
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[[1, 999]]), "outside the model vocabulary"),
    (dict(prompts="hello"), "token-id lists"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_samples=0), "num_samples"),
    (dict(eos_token_ids=[500]), "eos_token_ids"),
])
def test_bad_generate_arguments_raise_one_line(tiny, bad, message):
    _, sampler = tiny
    kwargs = dict(prompts=[[1, 2]], max_new_tokens=4) | bad
    with pytest.raises(TailorError, match=message) as err:
        sampler.generate(kwargs.pop("prompts"), **kwargs)
    assert "\n" not in str(err.value)


def test_a_budget_past_the_models_positions_warns_once_and_still_generates(tiny, caplog):
    _, sampler = tiny
    original = sampler.config
    sampler.config = original.replace(max_position_embeddings=12)  # the same weights, declared with a 12-position context
    try:
        with caplog.at_level(logging.WARNING, logger="tailor_jax.sampling.engine"):
            for _ in range(2):
                out = sampler.generate([[1, 2, 3]], max_new_tokens=10, eos_token_ids=[])
        warnings = [r.getMessage() for r in caplog.records if "max_position_embeddings" in r.getMessage()]
        assert warnings == ["sampler: prompts of up to 3 tokens + max_new_tokens 10 = 13 positions, more than the model's "
                            "max_position_embeddings (12): a generation that long runs past the positions the model was "
                            "trained on; lower the generation budget or the prompts"]
        assert len(out.tokens[0]) == 10
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tailor_jax.sampling.engine"):
            sampler.generate([[1, 2]], max_new_tokens=10, eos_token_ids=[])  # 12 positions: within
        assert not [r for r in caplog.records if "max_position_embeddings" in r.getMessage()]
    finally:
        sampler.config = original


def test_sharded_sampling_matches_single_device(tiny):
    from tailor_jax.model import shard_model
    from tailor_jax.parallel.mesh import MeshConfig, create_mesh

    model, sampler = tiny
    if jax.device_count() < 8:
        pytest.skip("needs 8 (virtual) devices")
    mesh = create_mesh(MeshConfig(data=4, fsdp=1, tensor=2))
    sharded = Sampler(shard_model(model, mesh), mesh=mesh)
    prompts = [[5, 6, 7], [9, 10], [11], [2, 3, 4, 5, 6]]
    out = sharded.generate(prompts, max_new_tokens=10, num_samples=2, temperature=0.9, seed=3, eos_token_ids=[])
    ref = sampler.generate(prompts, max_new_tokens=10, num_samples=2, temperature=0.9, seed=3, eos_token_ids=[])
    assert out.tokens == ref.tokens
    np.testing.assert_allclose(out.logprob_array, ref.logprob_array, atol=1e-4)


def test_shared_prompt_cache_matches_the_models_own_cache_path(tiny):
    """The default decode step (prompt cache shared by the G rows) equals decoding through the model's
    KVCache with the prompt cache repeated G times, for grouped sampling across two cache segments."""
    model, sampler = tiny
    prompts = [[5, 6, 7, 8, 9], [9, 10], [11, 12, 13]]
    kwargs = dict(max_new_tokens=40, num_samples=3, temperature=1.0, seed=5, eos_token_ids=[])  # 2 segments
    shared = sampler.generate(prompts, **kwargs)
    repeated = Sampler(model, share_prompt_cache=False).generate(prompts, **kwargs)
    assert shared.tokens == repeated.tokens
    np.testing.assert_allclose(shared.logprob_array, repeated.logprob_array, atol=1e-5)


class _CharTokenizer:
    """Token t <-> chr(65 + t), except token 62, which decodes to the two characters "BC"."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) - 65 for c in text]

    def decode(self, ids):
        return "".join("BC" if t == 62 else chr(65 + t) for t in ids)


def test_stop_strings_stop_in_loop_and_on_other_tokenizations(tiny):
    from tailor_jax.sampling.engine import _stop_string_cut

    _, sampler = tiny
    tokenizer = _CharTokenizer()
    prompts = [[5, 6, 7], [9, 10]]
    free = sampler.generate(prompts, max_new_tokens=12, eos_token_ids=[])
    text = tokenizer.decode(free.tokens[0])
    stop = text[4:6]
    out = sampler.generate(prompts, max_new_tokens=12, eos_token_ids=[], stop_strings=[stop], tokenizer=tokenizer)
    cut = text.index(stop) + 2
    assert out.tokens[0] == free.tokens[0][:cut] and out.finished[0] and out.lengths[0] == cut
    assert out.logprobs[0] == free.logprobs[0][:cut]
    # A stop string reached through a different tokenization ("BC" as one token) is cut on the host.
    assert _stop_string_cut(tokenizer, [0, 5, 62, 7], ["BC"]) == 3
    assert _stop_string_cut(tokenizer, [0, 1, 2, 7], ["BC"]) == 3
    assert _stop_string_cut(tokenizer, [0, 1, 7], ["BC"]) is None
    with pytest.raises(TailorError, match="tokenizer"):
        sampler.generate(prompts, max_new_tokens=4, stop_strings=["x"])
