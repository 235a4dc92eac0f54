"""HF interop: logits parity with transformers (PyTorch CPU, float32) and save/load round trips."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tailor_jax.errors import TailorError
from tailor_jax.model import load_pretrained, save_pretrained

VOCAB, BATCH, LENGTH = 128, 3, 12

# name -> (config class, kwargs): GQA everywhere; tied/untied; q/k/v bias on (qwen2, llama+bias) and
# off (llama); Llama-3 rope scaling with a short original context so all three frequency bands are used.
CASES = {
    "qwen2_tied": (transformers.Qwen2Config, dict(tie_word_embeddings=True, rope_theta=10000.0)),
    "qwen2_untied": (transformers.Qwen2Config, dict(tie_word_embeddings=False, num_hidden_layers=3)),
    "llama3_scaled": (transformers.LlamaConfig, dict(
        tie_word_embeddings=False, attention_bias=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "llama_bias_tied": (transformers.LlamaConfig, dict(
        tie_word_embeddings=True, attention_bias=True, num_key_value_heads=1, head_dim=24)),
}


def _make_checkpoint(directory, config_cls, kwargs, seed):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-6)
    base.update(kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**base)).eval()
    with torch.no_grad():  # random values everywhere, biases and norm scales included
        for name, param in model.named_parameters():
            scale = 0.1 if "norm" in name else 0.15
            param.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn_like(param))
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for seed, (name, (config_cls, kwargs)) in enumerate(CASES.items()):
        directory = tmp_path_factory.mktemp(name)
        out[name] = (directory, _make_checkpoint(directory, config_cls, kwargs, seed))
    return out


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    mask = np.ones((BATCH, LENGTH), bool)
    mask[1, :5] = False  # left padding
    mask[2, :1] = False
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


def _hf_logits(model, tokens, mask=None):
    with torch.no_grad():
        kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask.astype(np.int64))}
        return model(torch.tensor(tokens.astype(np.int64)), **kwargs).logits.numpy()


def _our_logits(model, tokens, mask=None, positions=None):
    out, _ = model(jnp.asarray(tokens), None if positions is None else jnp.asarray(positions),
                   attention_mask=None if mask is None else jnp.asarray(mask))
    return np.asarray(out)


def _params(model):
    from flax import nnx
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(
        nnx.to_pure_dict(nnx.state(model, nnx.Param)))}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers_with_left_padding(checkpoints, batch, name):
    directory, hf_model = checkpoints[name]
    tokens, mask, positions = batch
    model = load_pretrained(directory)
    ours = _our_logits(model, tokens, mask, positions)
    ref = _hf_logits(hf_model, tokens, mask)
    assert ours.dtype == np.float32 and ours.shape == (BATCH, LENGTH, VOCAB)
    assert np.abs(ref).max() > 1.0  # logits are not trivially small
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["qwen2_tied", "llama3_scaled"])
def test_round_trip_is_bitwise_and_transformers_loads_it(checkpoints, batch, tmp_path, name):
    directory, hf_model = checkpoints[name]
    tokens, _, _ = batch
    first = load_pretrained(directory)
    save_pretrained(first, tmp_path / "saved")
    second = load_pretrained(tmp_path / "saved")
    p1, p2 = _params(first), _params(second)
    assert p1.keys() == p2.keys()
    for key in p1:
        assert p1[key].dtype == p2[key].dtype and np.array_equal(p1[key], p2[key]), key
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert type(reloaded) is type(hf_model)
    np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens))


def test_sharded_index_and_bfloat16(checkpoints, batch, tmp_path):
    directory, hf_model = checkpoints["qwen2_untied"]
    tokens, _, _ = batch
    model = load_pretrained(directory)
    save_pretrained(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = load_pretrained(tmp_path / "sharded")
    for key, value in _params(model).items():
        assert np.array_equal(value, _params(again)[key]), key
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens))

    half = load_pretrained(directory, dtype="bfloat16")
    assert half.embed.get_value().dtype == jnp.bfloat16 and half.config.dtype == "bfloat16"
    ours = _our_logits(half, tokens)
    assert ours.dtype == np.float32
    assert np.abs(ours - _hf_logits(hf_model, tokens)).max() < 0.5  # bf16 rounding, same function
    save_pretrained(half, tmp_path / "bf16")
    hf_half = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert hf_half.model.embed_tokens.weight.dtype == torch.bfloat16
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_bad_checkpoints_fail_with_clear_errors(checkpoints, tmp_path):
    directory, _ = checkpoints["qwen2_tied"]
    config = json.loads((directory / "config.json").read_text())

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(directory / "model.safetensors")
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(TailorError, match="unsupported model_type 'gpt2'"):
        load_pretrained(bad)

    (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    with pytest.raises(TailorError, match=r"model\.layers\.0\.mlp\.down_proj\.weight.*shape \[64, 96\], expected \[64, 80\]"):
        load_pretrained(bad)

    (bad / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(TailorError, match="'lm_head.weight' is missing"):
        load_pretrained(bad)

    with pytest.raises(TailorError, match="config.json not found"):
        load_pretrained(tmp_path / "nowhere")


def test_convert_cli_hf_to_hf_and_checkpoint_to_hf(checkpoints, batch, tmp_path, capsys):
    import orbax.checkpoint as ocp
    from flax import nnx

    from tailor_jax.cli import main

    directory, hf_model = checkpoints["llama3_scaled"]
    tokens, _, _ = batch
    assert main(["convert", str(directory), str(tmp_path / "half"), "--dtype", "bfloat16"]) == 0
    half = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "half", dtype="auto")
    assert half.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert torch.equal(half.model.layers[0].mlp.up_proj.weight,
                       hf_model.model.layers[0].mlp.up_proj.weight.to(torch.bfloat16))
    assert main(["convert", str(directory), str(tmp_path / "half")]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err

    # a trainer-style checkpoint: Orbax StandardSave of the model's nnx.Param state under <step>/params
    model = load_pretrained(directory)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((tmp_path / "ckpt" / "7" / "params").absolute(), nnx.state(model, nnx.Param))
    checkpointer.wait_until_finished()
    assert main(["convert", str(tmp_path / "ckpt" / "7"), str(tmp_path / "from_ckpt"), "--model", str(directory)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "from_ckpt").eval()
    np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens))
    assert main(["convert", str(tmp_path / "ckpt" / "7"), str(tmp_path / "x"), "--model", "tiny"]) == 2
    assert "cannot restore model parameters" in capsys.readouterr().err
