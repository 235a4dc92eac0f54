"""The NNX decoder on its own: KV-cache decoding, padding, packing, remat, dtypes, presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tailor_jax.model.logprobs import logprobs_from_logits as token_logprobs
from tailor_jax.errors import TailorError
from tailor_jax.model import (
    PRESETS, ModelConfig, Transformer, create_model, get_preset, init_cache,
)

CONFIG = ModelConfig(
    vocab_size=97, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=6, num_kv_heads=2,
    head_dim=8, attention_bias=True, tie_word_embeddings=False,
)


@pytest.fixture(scope="module")
def model():
    return create_model(CONFIG, seed=1)


@pytest.fixture(scope="module")
def forward(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(tokens, positions, mask):
        out, _ = nnx.merge(graphdef, state)(tokens, positions, attention_mask=mask)
        return out

    return run


def _tokens(batch, length, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (batch, length)), jnp.int32)


def test_prefill_then_decode_matches_full_forward_with_left_padding(model, forward):
    tokens = _tokens(3, 10)
    mask = np.ones((3, 10), bool)
    mask[1, :3] = False
    mask[2, :6] = False
    positions = jnp.asarray(np.maximum(np.cumsum(mask, 1) - 1, 0), jnp.int32)
    mask = jnp.asarray(mask)
    full = np.asarray(forward(tokens, positions, mask))

    graphdef, state = nnx.split(model)

    @jax.jit
    def step(tokens, positions, mask, cache):
        return nnx.merge(graphdef, state)(tokens, positions, attention_mask=mask, cache=cache)

    cache = init_cache(CONFIG, batch=3, max_len=16)
    prompt = 7
    logits, cache = step(tokens[:, :prompt], positions[:, :prompt], mask[:, :prompt], cache)
    pieces = [np.asarray(logits)]
    for t in range(prompt, 10):
        logits, cache = step(tokens[:, t : t + 1], positions[:, t : t + 1], mask[:, t : t + 1], cache)
        pieces.append(np.asarray(logits))
    decoded = np.concatenate(pieces, axis=1)
    valid = np.asarray(mask)
    np.testing.assert_allclose(decoded[valid], full[valid], atol=1e-5)
    assert int(cache.index) == 10
    assert cache.k.shape == (2, 3, 16, 2, 8) and cache.k.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(cache.mask[:, :10]), valid)
    assert not np.asarray(cache.mask[:, 10:]).any()


def test_padding_does_not_change_real_tokens(forward):
    tokens = _tokens(1, 6, seed=3)
    alone = np.asarray(forward(tokens, jnp.arange(6)[None], jnp.ones((1, 6), bool)))
    padded_tokens = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), tokens], axis=1)
    mask = jnp.arange(10)[None] >= 4
    positions = jnp.maximum(jnp.arange(10) - 4, 0)[None]
    padded = np.asarray(forward(padded_tokens, positions, mask))
    np.testing.assert_allclose(padded[:, 4:], alone, atol=1e-5)


def test_packed_segments_equal_separate_sequences(model):
    a, b = _tokens(1, 5, seed=4), _tokens(1, 4, seed=5)
    packed = jnp.concatenate([a, b, jnp.zeros((1, 1), jnp.int32)], axis=1)
    segments = jnp.asarray([[1] * 5 + [2] * 4 + [0]])
    positions = jnp.asarray([list(range(5)) + list(range(4)) + [0]])
    out, cache = nnx.jit(lambda m, t, p, s: m(t, p, segment_ids=s))(model, packed, positions, segments)
    assert cache is None
    separate = nnx.jit(lambda m, t: m(t)[0])
    np.testing.assert_allclose(out[:, :5], separate(model, a), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:9], separate(model, b), atol=1e-5)


def test_remat_gives_same_loss_and_gradients():
    tokens = _tokens(2, 8, seed=6)

    def loss(model):
        logits, _ = model(tokens)
        return -token_logprobs(logits[:, :-1], tokens[:, 1:]).mean()

    plain = create_model(CONFIG, seed=2)
    remat = create_model(CONFIG.replace(remat=True), seed=2)
    value_and_grad = nnx.jit(nnx.value_and_grad(loss))
    l1, g1 = value_and_grad(plain)
    l2, g2 = value_and_grad(remat)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(x, y, atol=1e-6)

def test_shared_prefix_forward_equals_full_rows_with_gradients():
    # 2 left-padded prompts of 7 slots, 5 rows continuing them (row 3 from prompt 0 again), 20-token
    # continuations with padding at the end; chunk 8 makes the continuation attention chunked.
    model = create_model(CONFIG.replace(attention_query_chunk=8), seed=4)
    rng = np.random.default_rng(8)
    p, c = 7, 20
    prompt_mask = np.ones((2, p), bool)
    prompt_mask[1, :3] = False
    prompt_tokens = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (2, p)), jnp.int32)
    prompt_positions = np.maximum(np.cumsum(prompt_mask, 1) - 1, 0)
    row_prompt = np.array([0, 1, 1, 0, 1])
    tokens = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (5, c)), jnp.int32)
    mask = np.arange(c)[None] < np.array([20, 12, 20, 3, 1])[:, None]
    positions = prompt_mask.sum(1)[row_prompt][:, None] + np.arange(c)[None]
    weights = jnp.asarray(rng.normal(size=(5, c, CONFIG.hidden_size)) * mask[..., None], jnp.float32)

    def shared(model):
        prompt_hidden, hidden = model.shared_prefix_forward(
            prompt_tokens, jnp.asarray(prompt_positions), jnp.asarray(prompt_mask), jnp.asarray(row_prompt),
            tokens, jnp.asarray(positions), jnp.asarray(mask))
        last = prompt_hidden[row_prompt, -1]
        return (hidden * weights).sum() + (last * weights[:, 0]).sum(), (hidden, last)

    def full(model):
        rows = jnp.concatenate([prompt_tokens[row_prompt], tokens], axis=1)
        hidden, _ = model(rows, jnp.asarray(np.concatenate([prompt_positions[row_prompt], positions], 1)),
                          attention_mask=jnp.asarray(np.concatenate([prompt_mask[row_prompt], mask], 1)), return_hidden=True)
        return (hidden[:, p:] * weights).sum() + (hidden[:, p - 1] * weights[:, 0]).sum(), (hidden[:, p:], hidden[:, p - 1])

    (l1, (h1, last1)), g1 = nnx.jit(nnx.value_and_grad(shared, has_aux=True))(model)
    (l2, (h2, last2)), g2 = nnx.jit(nnx.value_and_grad(full, has_aux=True))(model)
    np.testing.assert_allclose(np.asarray(h1)[mask], np.asarray(h2)[mask], atol=1e-5)
    np.testing.assert_allclose(last1, last2, atol=1e-5)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(x, y, atol=1e-5 * float(np.abs(y).max()))


def test_causal_query_chunks_give_same_loss_and_gradients():
    # 45 tokens in chunks of 16 (the last one short), with left padding and two packed segments.
    tokens = _tokens(2, 45, seed=7)
    mask = np.ones((2, 45), bool)
    mask[1, :9] = False
    segments = jnp.asarray(np.where(np.arange(45) < 30, 1, 2)[None].repeat(2, 0) * mask)
    positions = jnp.asarray(np.where(np.arange(45) < 30, np.arange(45), np.arange(45) - 30)[None].repeat(2, 0))

    def loss(model):
        logits, _ = model(tokens, positions, attention_mask=jnp.asarray(mask), segment_ids=segments)
        scored = mask[:, :-1] & mask[:, 1:]  # padding rows attend nothing; their logits are never used
        return -(token_logprobs(logits[:, :-1], tokens[:, 1:]) * scored).mean()

    whole = create_model(CONFIG.replace(attention_query_chunk=0), seed=3)
    chunked = create_model(CONFIG.replace(attention_query_chunk=16), seed=3)
    value_and_grad = nnx.jit(nnx.value_and_grad(loss))
    l1, g1 = value_and_grad(whole)
    l2, g2 = value_and_grad(chunked)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)



def test_bfloat16_policy_and_hidden_output():
    tokens = _tokens(2, 5, seed=7)
    run = nnx.jit(lambda m, t: m(t)[0])
    ref = np.asarray(run(create_model(CONFIG, seed=3), tokens))
    mixed = create_model(CONFIG.replace(dtype="bfloat16"), seed=3)  # f32 params, bf16 compute
    assert mixed.layers[0].mlp.up_kernel.get_value().dtype == jnp.float32
    logits = run(mixed, tokens)
    assert logits.dtype == jnp.float32
    assert 0 < np.abs(np.asarray(logits) - ref).max() < 0.05 * np.abs(ref).max()
    # bf16 params and compute: shapes and dtypes only (no compile needed)
    half = nnx.eval_shape(lambda: Transformer(CONFIG.replace(param_dtype="bfloat16", dtype="bfloat16"), rngs=nnx.Rngs(0)))
    assert half.layers[0].mlp.up_kernel.get_value().dtype == jnp.bfloat16
    hidden = nnx.eval_shape(lambda m, t: m(t, return_hidden=True)[0], half, tokens)
    assert hidden.shape == (2, 5, CONFIG.hidden_size) and hidden.dtype == jnp.bfloat16
    assert nnx.eval_shape(lambda m, t: m(t)[0], half, tokens).dtype == jnp.float32
    assert init_cache(half.config, 2, 8).k.dtype == jnp.bfloat16


def test_token_logprobs_matches_numpy():
    logits = np.random.default_rng(0).normal(size=(2, 3, 7)).astype(np.float32)
    targets = np.array([[0, 6, 3], [1, 1, 2]])
    scaled = logits / 0.7
    expected = scaled - np.log(np.exp(scaled).sum(-1, keepdims=True))
    expected = np.take_along_axis(expected, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(token_logprobs(jnp.asarray(logits), jnp.asarray(targets), 0.7), expected, atol=1e-5)


def _abstract_param_count(config):
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("name,expected", [
    ("bench-tiny", 4_067_072),  # BENCHMARKS.md: 4.07 M
    ("qwen2.5-0.5b", 494_032_768),  # published parameter counts of the HF checkpoints
    ("qwen2.5-7b", 7_615_616_512),
    ("llama-3.2-1b", 1_235_814_400),
])
def test_preset_shapes(name, expected):
    config = get_preset(name)
    assert config.num_params() == expected
    assert _abstract_param_count(config) == expected


def test_all_presets_build_abstractly():
    for name in sorted(set(PRESETS) - {"bench-tiny", "qwen2.5-0.5b", "qwen2.5-7b", "llama-3.2-1b"}):
        config = get_preset(name)
        assert _abstract_param_count(config) == config.num_params(), name
        hash(config)


def test_config_errors():
    with pytest.raises(TailorError, match="unknown model preset 'gpt-9'"):
        get_preset("gpt-9")
    with pytest.raises(TailorError, match="multiple of num_kv_heads"):
        CONFIG.replace(num_kv_heads=4)
    with pytest.raises(TailorError, match="unknown architecture"):
        CONFIG.replace(architecture="mamba")
    with pytest.raises(TailorError, match="unsupported dtype"):
        CONFIG.replace(dtype="int8")


def test_mlp_chunks_keep_outputs_and_gradients():
    """`mlp_chunk` runs the MLP a sequence chunk at a time (each recomputed in the backward pass):
    the loss and every gradient equal the one-block MLP's, for chunks that divide the length and
    chunk sizes that do not (the largest divisor below is used)."""
    config = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                         num_kv_heads=1, head_dim=8)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, size=(2, 12)), jnp.int32)

    def value_and_grads(mlp_chunk):
        graphdef, params, rest = nnx.split(Transformer(config.replace(mlp_chunk=mlp_chunk), rngs=nnx.Rngs(0)), nnx.Param, ...)
        return jax.value_and_grad(lambda p: (nnx.merge(graphdef, p, rest)(tokens)[0] ** 2).mean())(params)

    want, want_grads = value_and_grads(0)
    for chunk in (8, 10):  # 2 rows: 4 positions per chunk; 5 -> 4 (the largest divisor of 12 below)
        got, got_grads = value_and_grads(chunk)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
