"""The policy model: config + presets, the Flax NNX decoder with KV cache, Hugging Face interop."""

from tailor_jax.model.config import PRESETS, ModelConfig, get_preset
from tailor_jax.model.transformer import KVCache, Transformer, init_cache, token_logprobs

__all__ = ["PRESETS", "KVCache", "ModelConfig", "Transformer", "get_preset", "init_cache", "token_logprobs"]
