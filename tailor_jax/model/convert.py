"""`tailor-jax convert`: write a Hugging Face model directory from an HF directory (e.g. to change the
dtype or re-shard the safetensors files) or from a tailor-jax training checkpoint (Orbax `params`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flax import nnx

from tailor_jax.errors import TailorError
from tailor_jax.model.config import PRESETS, ModelConfig, get_preset
from tailor_jax.model.hf_io import abstract_model, load_pretrained, read_config, save_pretrained
from tailor_jax.model.transformer import Transformer


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a model to a Hugging Face directory (from HF or a training checkpoint)",
        description="SRC is an HF directory (config.json + safetensors), a training checkpoint step "
        "directory (holding params/), or an Orbax params directory. OUT must not exist yet.",
    )
    parser.add_argument("src", help="HF model directory, checkpoint step directory, or Orbax params directory")
    parser.add_argument("out", help="new HF model directory to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the written tensors (default: as stored)")
    parser.add_argument("--model", help="for checkpoints: a preset name (" + ", ".join(sorted(PRESETS))
                        + ") or an HF directory whose config.json describes the model")
    parser.add_argument("--vocab-size", type=int, help="for checkpoints: override the model's vocab_size")
    parser.add_argument("--max-shard-gb", type=float, default=4.0,
                        help="split safetensors files above this size (GB), with an index (default 4)")
    parser.set_defaults(func=run)


def model_config_from_arg(model: str, vocab_size: int | None = None) -> ModelConfig:
    config = read_config(model) if Path(model).is_dir() else get_preset(model)
    return config.replace(vocab_size=vocab_size) if vocab_size else config


def load_checkpoint_params(path: str | Path, config: ModelConfig) -> Transformer:
    """A model whose parameters are restored from an Orbax `params` item saved by the trainer."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    params_dir = path / "params" if (path / "params").is_dir() else path
    graphdef, params, rest = nnx.split(abstract_model(config), nnx.Param, ...)
    try:
        restored = ocp.StandardCheckpointer().restore(params_dir, params)
    except Exception as err:  # orbax raises many types; the first line names the mismatch
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TailorError(
            f"cannot restore model parameters from {params_dir} with the given --model/--vocab-size ({first})"
        ) from None
    return nnx.merge(graphdef, restored, rest)


def run(args: argparse.Namespace) -> int:
    src, out = Path(args.src), Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise TailorError(f"{out} already exists and is not empty; choose a new output directory")
    if not src.is_dir():
        raise TailorError(f"{src} is not a directory")
    if (src / "config.json").is_file():
        model = load_pretrained(src)
    else:
        if not args.model:
            raise TailorError(f"{src} is a checkpoint, not an HF directory: pass --model PRESET_OR_HF_DIR")
        model = load_checkpoint_params(src, model_config_from_arg(args.model, args.vocab_size))
    save_pretrained(model, out, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
    print(f"wrote {out} ({model.config.architecture}, {model.config.num_params():,} parameters, "
          f"{args.dtype or model.config.param_dtype})")
    return 0
