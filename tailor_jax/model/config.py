"""Model configuration: one frozen dataclass for the Qwen2 / Llama 3 decoder family, plus named presets."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from tailor_jax.errors import TailorError

ARCHITECTURES = ("qwen2", "llama")
ATTENTION_IMPLEMENTATIONS = ("auto", "dense", "chunked", "xla", "cudnn", "splash")  # see model/attention.py
# Per-decoder-layer rematerialisation: what the forward pass keeps for the backward pass
# (the rest is recomputed). Names map to jax.checkpoint_policies in model/transformer.py.
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# How a model runs, never its shape: what a config may set on a pretrained checkpoint.
RUNTIME_OPTIONS = ("remat", "attention", "attention_query_chunk", "mlp_chunk")


def check_runtime_options(options: dict[str, Any], where: str) -> None:
    """One TailorError line for an option that is not a runtime option or has a bad value."""
    unknown = sorted(set(options) - set(RUNTIME_OPTIONS))
    if unknown:
        raise TailorError(f"{where}: {', '.join(unknown)} cannot be set here; only {', '.join(RUNTIME_OPTIONS)} "
                          "(how the model runs, not its shape)")
    try:
        ModelConfig(1, 1, 1, 1, 1, 1, 1, **options)
    except TailorError as err:
        raise TailorError(f"{where}: {str(err).removeprefix('model config: ')}") from None
    except TypeError as err:
        raise TailorError(f"{where}: {err}") from None


def dtype_name(dtype: Any) -> str:
    """Canonical name ("float32", "bfloat16", "float16") of a dtype given as a string or a numpy/jax dtype."""
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in _DTYPES:
        raise TailorError(f"unsupported dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer (Qwen2/Qwen2.5 and Llama 3.x layouts).

    `param_dtype` is the storage dtype of parameters, `dtype` the compute dtype of activations and
    matmuls; softmax, norms statistics and logits are always float32. `rope_scaling` follows the
    Hugging Face dict (e.g. {"rope_type": "llama3", "factor": 32.0, ...}) or is None.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2: always on)
    attention_out_bias: bool = False  # bias on the output projection (Llama with attention_bias=True)
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"  # one of REMAT_POLICIES; true/false are accepted as "full"/"none"
    attention: str = "auto"  # one of ATTENTION_IMPLEMENTATIONS
    attention_query_chunk: int = 64  # query rows per chunk of the dense/chunked attention (0: one block)
    mlp_chunk: int = 0  # tokens (all rows) per chunk of the MLP, each recomputed in the backward pass (0: one block)
    architecture: str = "qwen2"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_dtype", dtype_name(self.param_dtype))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", dict(self.rope_scaling))
        if self.architecture not in ARCHITECTURES:
            raise TailorError(
                f"unknown architecture {self.architecture!r}: use one of {', '.join(ARCHITECTURES)}"
            )
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            raise TailorError(
                f"model config: remat must be one of {', '.join(REMAT_POLICIES)} (or true/false), got {self.remat!r}"
            )
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise TailorError(
                f"model config: attention must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, got {self.attention!r}"
            )
        if self.mlp_chunk < 0:
            raise TailorError(f"model config: mlp_chunk must be >= 0, got {self.mlp_chunk}")
        if self.attention_query_chunk < 0:
            raise TailorError(f"model config: attention_query_chunk must be >= 0, got {self.attention_query_chunk}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise TailorError(f"model config: {name} must be a positive integer, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise TailorError(
                f"model config: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    def __hash__(self) -> int:  # rope_scaling is a dict, so hash through a canonical JSON form
        fields = dataclasses.asdict(self)
        return hash(json.dumps(fields, sort_keys=True, default=str))

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(_DTYPES[self.dtype])

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(_DTYPES[self.param_dtype])

    def num_params(self) -> int:
        """Number of parameters (embeddings counted once when tied)."""
        h, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv
        if self.attention_out_bias:
            attn += h
        layer = attn + 3 * h * f + 2 * h
        head = 0 if self.tie_word_embeddings else h * v
        return v * h + self.num_layers * layer + h + head

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def check_context(self, positions: int, what: str, knob: str) -> None:
        """Stop (one line) when `positions` tokens would run past `max_position_embeddings`.
        RoPE computes any position, so nothing would fail: a pretrained model would silently
        degrade past the length it was trained on. `what` names the lengths, `knob` what to lower."""
        if positions > self.max_position_embeddings:
            raise TailorError(
                f"{what} = {positions} positions, more than the model's max_position_embeddings "
                f"({self.max_position_embeddings}); lower {knob} or, for a model trained from scratch, raise "
                "model.overrides.max_position_embeddings"
            )


_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_QWEN_TOKENS = dict(bos_token_id=151643, eos_token_ids=(151643, 151645), pad_token_id=151643)
_LLAMA_TOKENS = dict(bos_token_id=128000, eos_token_ids=(128001, 128008, 128009), pad_token_id=None)


def _qwen(vocab, hidden, inter, layers, heads, kv, max_pos, tied) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads, max_position_embeddings=max_pos,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied, attention_bias=True,
        architecture="qwen2", param_dtype="bfloat16", dtype="bfloat16", **_QWEN_TOKENS,
    )


def _llama(hidden, inter, layers, heads, kv, head_dim) -> ModelConfig:
    return ModelConfig(
        vocab_size=128256, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim, max_position_embeddings=131072,
        rope_theta=500_000.0, rope_scaling=dict(_LLAMA3_ROPE), rms_norm_eps=1e-5,
        tie_word_embeddings=True, architecture="llama", param_dtype="bfloat16", dtype="bfloat16",
        **_LLAMA_TOKENS,
    )


PRESETS: dict[str, ModelConfig] = {
    # From-scratch CPU models (vocabulary sized for small trained tokenizers; override with .replace).
    "tiny": ModelConfig(
        vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=32, max_position_embeddings=1024, attention_bias=True,
    ),
    # /work/shared/BENCHMARKS.md `bench-tiny`: a Qwen2 shape with 4.07 M parameters.
    "bench-tiny": ModelConfig(
        vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
        num_kv_heads=2, head_dim=32, max_position_embeddings=1024, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=True,
    ),
    "qwen2.5-0.5b": _qwen(151936, 896, 4864, 24, 14, 2, 32768, tied=True),
    "qwen2.5-1.5b": _qwen(151936, 1536, 8960, 28, 12, 2, 131072, tied=True),
    "qwen2.5-3b": _qwen(151936, 2048, 11008, 36, 16, 2, 32768, tied=True),
    "qwen2.5-7b": _qwen(152064, 3584, 18944, 28, 28, 4, 131072, tied=False),
    "llama-3.2-1b": _llama(2048, 8192, 16, 32, 8, 64),
    "llama-3.2-3b": _llama(3072, 8192, 28, 24, 8, 128),
}
PRESETS["bench-0.5b"] = PRESETS["qwen2.5-0.5b"]


def get_preset(name: str) -> ModelConfig:
    """The named preset config (a fresh copy; adjust with `config.replace(...)`)."""
    if name not in PRESETS:
        raise TailorError(f"unknown model preset {name!r}: use one of {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name])
