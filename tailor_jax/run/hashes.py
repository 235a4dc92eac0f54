"""Stage hashes: a hash per stage of everything its output depends on (its own config and the
hash of the stage before it), and the hashes older run directories were written with, so that
they still resume (tests/test_run.py pins the quickstart's)."""

from __future__ import annotations

from typing import Any

from tailor_jax.config import config_hash, config_to_dict
from tailor_jax.run.config import RunConfig, grpo_config, sft_config, teacher_config


def _without(data: dict, *keys: str) -> dict:
    return {k: v for k, v in data.items() if k not in keys}


def stage_hashes(cfg: RunConfig, legacy_mesh: dict[str, Any] | None = None) -> dict[str, str]:
    """A hash per stage: its own config plus the previous stage's hash. Paths are excluded, so a
    moved run directory keeps its hashes, and so is the mesh: where a stage runs is not what it
    computes, so a run moved to other devices or another layout resumes (checkpoints restore
    into the new layout) and skips what is done.

    `legacy_mesh`: the hashes as written before 2026-12-05, which included the trainers' mesh
    (this one, where the section did not set its own), so that older run directories still match.
    """
    from tailor_jax.parallel.mesh import MeshConfig

    def mesh_as_hashed(part: dict, section: dict | None) -> dict:  # without it, or the legacy one
        if legacy_mesh is None:
            return _without(part, "mesh")
        return part if "mesh" in (section or {}) else {**part, "mesh": config_to_dict(MeshConfig(**legacy_mesh))}

    sft = _without(config_to_dict(sft_config(cfg)), "wandb", "memory")  # where metrics go and memory knobs are not what a stage computes
    sft["data"] = _without(sft["data"], "train_file", "eval_file")
    if not sft["position_gaps"]["prob"]:  # off (added 2026-12-05): hashes written before then still match
        sft = _without(sft, "position_gaps")
    sft = _without_default_guard(sft)
    parts: dict[str, Any] = {
        "data": {"task": cfg.task, "task_options": cfg.task_options, "data": config_to_dict(cfg.data)},
        **({"teacher": stage_hashes(teacher_config(cfg))["grpo"]} if cfg.warm_start.method == "redistill" else {}),
        "warm_start": config_to_dict(cfg.warm_start),
        "sft": mesh_as_hashed(_without(sft, "run_dir"), cfg.sft),
        "grpo": mesh_as_hashed(_grpo_hash_part(cfg), cfg.grpo) if cfg.grpo is not None else None,
        "eval": {"eval": config_to_dict(cfg.eval), "prompt_style": cfg.prompt_style, "think_prefill": cfg.think_prefill},
    }
    hashes, previous = {}, ""
    for stage, part in parts.items():
        previous = hashes[stage] = config_hash({"previous": previous, "config": part})
    return hashes


# The meshes the hashes of older run directories may hold: the presets as they resolved before
# 2026-12-05 (`auto` was every device on fsdp), or the run's own explicit mesh.
LEGACY_MESHES = ({"data": 1, "fsdp": -1, "tensor": 1}, {"data": 1, "fsdp": 1, "tensor": 1},
                 {"data": 1, "fsdp": 4, "tensor": 1}, {"data": 2, "fsdp": 4, "tensor": 1})


def accepted_hashes(cfg: RunConfig, hashes: dict[str, str]) -> dict[str, set[str]]:
    """Per stage, the hashes that count as this config's: today's (`hashes`), and the legacy ones."""
    legacy = [stage_hashes(cfg, mesh) for mesh in (*LEGACY_MESHES, *([cfg.mesh] if cfg.mesh is not None else []))]
    return {stage: {current, *(h[stage] for h in legacy)} for stage, current in hashes.items()}


# The non-finite guard's options (added 2026-12-06) enter the hashes only when changed, so run
# directories written before then still match.
_GUARD_DEFAULTS = {"nonfinite": "stop", "max_consecutive_skips": 10}


def _without_default_guard(part: dict) -> dict:
    return {k: v for k, v in part.items() if k not in _GUARD_DEFAULTS or v != _GUARD_DEFAULTS[k]}


def _grpo_hash_part(cfg: RunConfig) -> dict:
    grpo = _without_default_guard(_without(config_to_dict(grpo_config(cfg)), "run_dir", "init", "wandb", "memory"))
    grpo["eval"] = _without(grpo["eval"], "exclude_file")
    if not grpo["rollout"]["generation_batch_size"]:  # 0 (added 2026-12-06): older hashes still match
        grpo["rollout"] = _without(grpo["rollout"], "generation_batch_size")
    if not grpo["model"]:  # the runtime model options (added 2026-12-06): unset, older hashes still match
        grpo = _without(grpo, "model")
    return grpo
