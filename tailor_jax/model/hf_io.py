"""Hugging Face interop: read/write `config.json` + safetensors directories (Qwen2 and Llama layouts).

Loading into a mesh builds every parameter with `jax.make_array_from_callback`, so each device (and
each host) only reads the slices of the safetensors files that it holds.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from tailor_jax.errors import TailorError
from tailor_jax.model.config import RUNTIME_OPTIONS, ModelConfig, dtype_name
from tailor_jax.model.transformer import Transformer
from tailor_jax.parallel.sharding import Rules, state_shardings

_HF_ARCH = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


# ---------------------------------------------------------------------------------------------
# config.json <-> ModelConfig


def config_from_hf(hf: dict[str, Any], *, dtype: Any = None, source: str = "config.json") -> ModelConfig:
    """ModelConfig from a parsed HF `config.json`; unsupported features raise a TailorError."""
    arch = hf.get("model_type")
    if arch not in _HF_ARCH:
        raise TailorError(
            f"{source}: unsupported model_type {arch!r}; supported are {', '.join(_HF_ARCH)} (Qwen2/Qwen2.5, Llama 3.x)"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise TailorError(f"{source}: unsupported hidden_act {hf['hidden_act']!r}; only silu (SwiGLU) is supported")
    if hf.get("mlp_bias"):
        raise TailorError(f"{source}: mlp_bias=true is not supported")
    if hf.get("use_sliding_window"):
        raise TailorError(f"{source}: use_sliding_window=true is not supported; set it to false")
    rope = dict(hf.get("rope_parameters") or {})
    theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling is not None:
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
    eos = hf.get("eos_token_id")
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    num_heads = int(hf["num_attention_heads"])
    if dtype is None:
        dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    bias = True if arch == "qwen2" else bool(hf.get("attention_bias", False))
    try:
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // num_heads),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bias,
            attention_out_bias=bias if arch == "llama" else False,
            param_dtype=dtype_name(dtype),
            dtype=dtype_name(dtype),
            architecture=arch,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos,
            pad_token_id=hf.get("pad_token_id"),
        )
    except KeyError as err:
        raise TailorError(f"{source}: missing required key {err.args[0]!r}") from None


def config_to_hf(config: ModelConfig, dtype: str | None = None) -> dict[str, Any]:
    """A `config.json` dict that `transformers` reads back into the same architecture."""
    arch = config.architecture
    if arch == "qwen2" and (not config.attention_bias or config.attention_out_bias):
        raise TailorError("a qwen2 model must have q/k/v bias and no output bias to be saved in HF format")
    if arch == "llama" and config.attention_bias != config.attention_out_bias:
        raise TailorError("a llama model needs attention_bias == attention_out_bias to be saved in HF format")
    rope = {"rope_theta": config.rope_theta, "rope_type": "default"}
    rope.update(config.rope_scaling or {})
    eos = list(config.eos_token_ids)
    hf: dict[str, Any] = {
        "architectures": [_HF_ARCH[arch]],
        "model_type": arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_parameters": rope,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": config.pad_token_id,
        "dtype": dtype or config.param_dtype,
    }
    if arch == "llama":
        hf.update(attention_bias=config.attention_bias, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf


def read_config(path: str | Path, *, dtype: Any = None) -> ModelConfig:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TailorError(f"{path} is not a Hugging Face model directory: config.json not found")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise TailorError(f"{config_file}: invalid JSON ({err.msg} at line {err.lineno})") from None
    return config_from_hf(hf, dtype=dtype, source=str(config_file))


# ---------------------------------------------------------------------------------------------
# Parameter name/layout mapping. HF Linear weights are [out, in]; ours are [in, out] with heads split.


@dataclass(frozen=True)
class TensorMap:
    hf_name: str
    kind: str  # "copy" | "transpose" | "in_heads" | "heads_bias" | "out_heads"


def param_map(config: ModelConfig) -> dict[str, TensorMap]:
    """Our parameter path ("layers/0/attn/q_kernel") -> HF tensor name and layout transform."""
    out = {"embed": TensorMap("model.embed_tokens.weight", "copy"),
           "final_norm/scale": TensorMap("model.norm.weight", "copy")}
    if not config.tie_word_embeddings:
        out["lm_head"] = TensorMap("lm_head.weight", "transpose")
    for i in range(config.num_layers):
        ours, hf = f"layers/{i}", f"model.layers.{i}"
        out[f"{ours}/input_norm/scale"] = TensorMap(f"{hf}.input_layernorm.weight", "copy")
        out[f"{ours}/post_attn_norm/scale"] = TensorMap(f"{hf}.post_attention_layernorm.weight", "copy")
        for p in "qkv":
            out[f"{ours}/attn/{p}_kernel"] = TensorMap(f"{hf}.self_attn.{p}_proj.weight", "in_heads")
            if config.attention_bias:
                out[f"{ours}/attn/{p}_bias"] = TensorMap(f"{hf}.self_attn.{p}_proj.bias", "heads_bias")
        out[f"{ours}/attn/o_kernel"] = TensorMap(f"{hf}.self_attn.o_proj.weight", "out_heads")
        if config.attention_out_bias:
            out[f"{ours}/attn/o_bias"] = TensorMap(f"{hf}.self_attn.o_proj.bias", "copy")
        for p in ("gate", "up", "down"):
            out[f"{ours}/mlp/{p}_kernel"] = TensorMap(f"{hf}.mlp.{p}_proj.weight", "transpose")
    return out


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the HF tensor that holds our parameter of `shape`."""
    if kind == "copy":
        return shape
    if kind == "transpose":
        return shape[::-1]
    if kind == "in_heads":  # ours [H, N, D] <- HF [N*D, H]
        return (shape[1] * shape[2], shape[0])
    if kind == "heads_bias":  # ours [N, D] <- HF [N*D]
        return (shape[0] * shape[1],)
    if kind == "out_heads":  # ours [N, D, H] <- HF [H, N*D]
        return (shape[2], shape[0] * shape[1])
    raise AssertionError(kind)


def to_hf_layout(kind: str, array: np.ndarray) -> np.ndarray:
    if kind == "copy":
        return array
    if kind == "transpose":
        return array.T
    if kind == "in_heads":
        return array.reshape(array.shape[0], -1).T
    if kind == "heads_bias":
        return array.reshape(-1)
    if kind == "out_heads":
        return array.reshape(-1, array.shape[2]).T
    raise AssertionError(kind)


def read_block(kind: str, tensor: Any, index: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Our-layout block `index` of a parameter of `shape`, read from an HF tensor (anything sliceable,
    e.g. `safe_open(...).get_slice(name)` or a numpy array) touching only the rows/columns needed."""
    idx = [slice(*s.indices(n)[:2]) for s, n in zip(index, shape)]
    if kind == "copy":
        return tensor[tuple(idx)]
    if kind == "transpose":
        return tensor[idx[1], idx[0]].T
    if kind == "in_heads":
        h, n, d = idx
        head_dim = shape[2]
        block = tensor[n.start * head_dim : n.stop * head_dim, h].T  # [h, n*D]
        return block.reshape(block.shape[0], -1, head_dim)[:, :, d]
    if kind == "heads_bias":
        n, d = idx
        head_dim = shape[1]
        return tensor[n.start * head_dim : n.stop * head_dim].reshape(-1, head_dim)[:, d]
    if kind == "out_heads":
        n, d, h = idx
        head_dim = shape[1]
        block = tensor[h, n.start * head_dim : n.stop * head_dim].T  # [n*D, h]
        return block.reshape(-1, head_dim, block.shape[1])[:, d, :]
    raise AssertionError(kind)


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


# ---------------------------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def _open_tensors(path: Path) -> Iterator[Callable[[str], Any]]:
    """Yields `get(name) -> safetensors slice` over a single file or a sharded index."""
    index_file, single = path / SAFETENSORS_INDEX, path / SAFETENSORS_FILE
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text()).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    elif single.is_file():
        files, weight_map = [SAFETENSORS_FILE], None
    else:
        raise TailorError(f"{path}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} found (only safetensors are supported)")
    with contextlib.ExitStack() as stack:
        handles = {}
        for name in files:
            if not (path / name).is_file():
                raise TailorError(f"{path}: {SAFETENSORS_INDEX} lists {name}, which is missing")
            handles[name] = stack.enter_context(safe_open(str(path / name), framework="np"))
        if weight_map is None:
            weight_map = {key: SAFETENSORS_FILE for key in handles[SAFETENSORS_FILE].keys()}

        def get(name: str) -> Any:
            if name not in weight_map:
                raise TailorError(f"{path}: tensor {name!r} is missing from the checkpoint")
            return handles[weight_map[name]].get_slice(name)

        yield get


def abstract_model(config: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct leaves (no memory, no compute)."""
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))




def load_pretrained(
    path: str | Path, *, dtype: Any = None, mesh: Mesh | None = None, rules: Rules | None = None,
    compute_dtype: Any = None, options: dict[str, Any] | None = None,
) -> Transformer:
    """Load a local HF directory (config.json + safetensors) into a `Transformer`.

    `dtype` sets the parameter dtype (default: the checkpoint's); the compute dtype follows it unless
    `compute_dtype` is given. `options` sets how the model runs, never its shape: any of
    `RUNTIME_OPTIONS` (remat, attention, attention_query_chunk, mlp_chunk). With `mesh`, each parameter is created directly in its sharding from the
    logical-axis `rules` (default `DEFAULT_RULES`); without, on the default device.
    """
    path = Path(path)
    config = read_config(path, dtype=dtype)
    if compute_dtype is not None:
        config = config.replace(dtype=compute_dtype)
    if options:
        shape_keys = sorted(set(options) - set(RUNTIME_OPTIONS))
        if shape_keys:
            raise TailorError(
                f"model overrides {', '.join(shape_keys)} cannot change a pretrained checkpoint; "
                f"with `pretrained` only {', '.join(RUNTIME_OPTIONS)} may be set"
            )
        config = config.replace(**options)
    graphdef, state = nnx.split(abstract_model(config))
    shardings = state_shardings(state, mesh, rules) if mesh is not None else None
    mapping = param_map(config)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)
    sharding_leaves = (
        jax.tree_util.tree_leaves(shardings, is_leaf=_is_variable) if shardings is not None else [None] * len(leaves)
    )
    loaded = []
    with _open_tensors(path) as get:
        for (key_path, variable), sharding in zip(leaves, sharding_leaves):
            name = _path_str(key_path)
            if name not in mapping:
                raise AssertionError(f"no HF mapping for parameter {name}")
            tmap = mapping[name]
            shape = tuple(variable.get_value().shape)
            target = variable.get_value().dtype
            tensor = get(tmap.hf_name)
            found, expected = tuple(tensor.get_shape()), hf_shape(tmap.kind, shape)
            if found != expected:
                raise TailorError(
                    f"{path}: tensor {tmap.hf_name!r} has shape {list(found)}, expected {list(expected)} from config.json"
                )

            def read(index, tmap=tmap, tensor=tensor, shape=shape, target=target):
                return np.ascontiguousarray(read_block(tmap.kind, tensor, index, shape)).astype(target)

            if sharding is None:
                value = jnp.asarray(read(tuple(slice(None) for _ in shape)))
            else:
                value = jax.make_array_from_callback(shape, sharding.get_value(), read)
            loaded.append(variable.replace(value))
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, loaded))


# ---------------------------------------------------------------------------------------------
# Saving


def _to_host(x: jax.Array) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_pretrained(
    model: Transformer, path: str | Path, *, dtype: Any = None, max_shard_bytes: int = 4 << 30
) -> None:
    """Write `model` as an HF directory (config.json, generation_config.json, safetensors) loadable by
    `transformers.AutoModelForCausalLM.from_pretrained`. Tensors are stored in `dtype` (default: the
    parameter dtype), split into several files with an index when larger than `max_shard_bytes`.
    In a multi-process run every process must call this; only process 0 writes."""
    path = Path(path)
    config = model.config
    dtype = dtype_name(dtype or config.param_dtype)
    np_dtype = jnp.dtype(dtype)
    hf_config = config_to_hf(config, dtype)
    mapping = param_map(config)
    params = dict(
        (_path_str(p), v) for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param), is_leaf=_is_variable)
    )
    names = sorted(mapping, key=lambda n: mapping[n].hf_name)
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = math.prod(params[name].get_value().shape) * np_dtype.itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    writer = jax.process_index() == 0
    if writer:
        path.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, group in enumerate(groups):
        file = SAFETENSORS_FILE if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in group:
            host = _to_host(params[name].get_value()).astype(np_dtype)
            tensors[mapping[name].hf_name] = np.ascontiguousarray(to_hf_layout(mapping[name].kind, host))
            weight_map[mapping[name].hf_name] = file
        if writer:
            save_file(tensors, str(path / file), metadata={"format": "pt"})
    if not writer:
        return
    if len(groups) > 1:
        total = sum(math.prod(params[n].get_value().shape) * np_dtype.itemsize for n in names)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config[k] is not None}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
