"""Sharded forward passes on 8 virtual CPU devices equal the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

from tailor_jax.errors import TailorError
from tailor_jax.model import ModelConfig, create_model, init_cache, load_pretrained, shard_model
from tailor_jax.parallel import MeshConfig, create_mesh, logical_to_spec, put_global, use_sharding

CONFIG = ModelConfig(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=16, attention_bias=True, tie_word_embeddings=False,
)
MESHES = {
    "fsdp8": MeshConfig(fsdp=8),
    "fsdp4_tensor2": MeshConfig(fsdp=4, tensor=2),
    "data2_fsdp2_tensor2": MeshConfig(data=2, fsdp=2, tensor=2),
}


@pytest.fixture(scope="module")
def reference():
    assert jax.device_count() == 8, "tests/conftest.py should provide 8 virtual CPU devices"
    model = create_model(CONFIG, seed=0)
    tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (8, 12)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    mask[3, :4] = False
    logits = nnx.jit(lambda m, t, a: m(t, attention_mask=a)[0])(model, jnp.asarray(tokens), jnp.asarray(mask))
    return model, tokens, mask, np.asarray(logits)


def _sharded_forward(model, mesh, tokens, mask):
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, mask):
        return nnx.merge(graphdef, state)(tokens, attention_mask=mask)[0]

    with use_sharding(mesh):
        return forward(state, put_global(tokens, mesh, ("batch", "length")), put_global(mask, mesh, ("batch", "length")))


@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_forward_equals_single_device(reference, name):
    model, tokens, mask, expected = reference
    mesh = create_mesh(MESHES[name])
    sharded = shard_model(model, mesh)
    kernel = sharded.layers[0].mlp.gate_kernel.get_value()
    q_kernel = sharded.layers[0].attn.q_kernel.get_value()
    if name == "fsdp8":
        assert kernel.sharding.spec == P("fsdp", None)
        assert q_kernel.sharding.spec == P("fsdp", None, None)
    else:
        assert kernel.sharding.spec == P("fsdp", "tensor")
        assert q_kernel.sharding.spec == P("fsdp", "tensor", None)
    # every device holds only its slice of the parameter
    shard_shapes = {s.data.shape for s in kernel.addressable_shards}
    assert len(kernel.addressable_shards) == 8
    assert all(np.prod(shape) < np.prod(kernel.shape) for shape in shard_shapes)

    logits = _sharded_forward(sharded, mesh, tokens, mask)
    assert logits.sharding.spec[0] in ("fsdp", ("data", "fsdp"))  # activations split over the batch
    np.testing.assert_allclose(np.asarray(logits)[mask], expected[mask], atol=1e-5, rtol=0)


def test_sharded_init_and_sharded_load(tmp_path, reference):
    _, tokens, mask, _ = reference
    mesh = create_mesh(MeshConfig(fsdp=4, tensor=2))
    # random init straight into shards gives the same values as the single-device init
    direct = create_model(CONFIG, seed=0, mesh=mesh)
    assert direct.embed.get_value().sharding.spec == P("tensor", "fsdp")
    np.testing.assert_array_equal(np.asarray(direct.embed.get_value()), np.asarray(reference[0].embed.get_value()))

    hf_config = transformers.Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    plain = load_pretrained(tmp_path)
    sharded = load_pretrained(tmp_path, mesh=mesh)
    for name in ("q_kernel", "k_bias", "o_kernel"):
        array = getattr(sharded.layers[1].attn, name).get_value()
        assert "tensor" in jax.tree.leaves(tuple(array.sharding.spec)), name
        np.testing.assert_array_equal(np.asarray(array), np.asarray(getattr(plain.layers[1].attn, name).get_value()))
    with torch.no_grad():
        ref = hf_model(torch.tensor(tokens.astype(np.int64)), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    logits = np.asarray(_sharded_forward(sharded, mesh, tokens, mask))
    np.testing.assert_allclose(logits[mask], ref[mask], atol=1e-4, rtol=0)


def test_sharded_decode_with_cache(reference):
    model, tokens, _, expected = reference
    mesh = create_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    graphdef, state = nnx.split(shard_model(model, mesh))

    @jax.jit
    def step(state, tokens, cache):
        return nnx.merge(graphdef, state)(tokens, cache=cache)

    with use_sharding(mesh):
        cache = init_cache(CONFIG, batch=8, max_len=16)
        logits, cache = step(state, put_global(tokens[:, :10], mesh, ("batch", "length")), cache)
        last, cache = step(state, put_global(tokens[:, 10:11], mesh, ("batch", "length")), cache)
    unpadded = [row for row in range(8) if row != 3]  # the reference masked row 3's first tokens
    np.testing.assert_allclose(np.asarray(last)[unpadded, 0], expected[unpadded, 10], atol=1e-5)
    assert int(cache.index) == 11


def test_logical_rules_and_mesh_config():
    mesh = create_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert logical_to_spec(("batch", "length"), mesh=mesh) == P(("data", "fsdp"), None)
    # a dimension not divisible by its mesh axes falls back to fewer axes, never an invalid layout
    assert logical_to_spec(("batch", "length"), mesh=mesh, shape=(2, 4)) == P("data", None)
    assert logical_to_spec(("vocab", "embed"), mesh=mesh, shape=(7, 64)) == P(None, "fsdp")
    custom = MeshConfig(data=2, fsdp=2, tensor=2, rules={"embed": [], "mlp": ["fsdp", "tensor"]})
    assert logical_to_spec(("embed", "mlp"), custom.axis_rules(), mesh, (64, 96)) == P(None, ("fsdp", "tensor"))
    assert create_mesh(MeshConfig(data=2, fsdp=-1)).shape == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(TailorError, match="needs 6 devices but 8 are available"):
        create_mesh(MeshConfig(data=3, fsdp=2))
    with pytest.raises(TailorError, match="at most one mesh axis"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(TailorError, match="unknown mesh axis 'model'"):
        MeshConfig(rules={"mlp": ["model"]})
