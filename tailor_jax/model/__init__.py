"""The policy model: config + presets, the Flax NNX decoder with KV cache, Hugging Face interop."""

from tailor_jax.model.config import PRESETS, ModelConfig, get_preset
from tailor_jax.model.hf_io import config_from_hf, config_to_hf, load_pretrained, read_config, save_pretrained
from tailor_jax.model.logprobs import TokenStats, logprobs_from_logits, model_token_logprobs, token_logprobs
from tailor_jax.model.transformer import (
    KVCache, Transformer, create_model, init_cache, shard_model,
)

__all__ = [
    "PRESETS", "KVCache", "ModelConfig", "Transformer", "config_from_hf", "config_to_hf", "create_model", "get_preset",
    "init_cache", "load_pretrained", "read_config", "save_pretrained", "shard_model", "TokenStats", "logprobs_from_logits", "model_token_logprobs",
    "token_logprobs",
]
