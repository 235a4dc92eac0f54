"""A stand-in for the local Hugging Face checkpoint a shipped pretrained config names: the real
`config.json` of its model (the preset its file name starts with, e.g. qwen2.5-0.5b-kk.yaml ->
qwen2.5-0.5b) and an empty `tokenizer.json`. Enough for the plan's checks, which read the model's
shape and context length; nothing loads weights."""

from __future__ import annotations

import json
from pathlib import Path

from tailor_jax.model.config import PRESETS
from tailor_jax.model.hf_io import config_to_hf


def stub_checkpoint(directory: Path, config_path: Path) -> Path:
    preset = max((name for name in PRESETS if config_path.stem.startswith(name)), key=len, default=None)
    assert preset is not None, f"{config_path.name}: no model preset its name starts with"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config_to_hf(PRESETS[preset])))
    (directory / "tokenizer.json").write_text("{}")
    return directory
