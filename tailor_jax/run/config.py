"""The run config (`RunConfig` and its sections) and what it resolves to: the SFT and GRPO
trainer configs, the mesh, each stage's directory, the stages of a run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from tailor_jax.config import apply_overrides, config_from_dict, read_yaml, require
from tailor_jax.errors import TailorError


STAGES = ("data", "warm_start", "sft", "grpo", "eval", "report")


WARM_START_METHODS = ("task_trace", "tailor", "rule_based", "four_star", "redistill")


# `redistill` first trains its teacher (a rule_based run's data -> warm_start -> sft -> grpo) in
# RUN_DIR/teacher/, a stage of its own between data and warm_start.
TEACHER_STAGES = ("data", "warm_start", "sft", "grpo")


REDISTILL_OPTIONS = ("samples_per_question", "max_new_tokens", "temperature", "seed", "chunk")  # baselines.redistill's


# Mesh layouts by name (`mesh_preset`); an explicit `mesh` section wins over the preset.
MESH_PRESETS: dict[str, dict[str, Any] | None] = {
    "auto": None,  # on CPU every device (one per core) on data, elsewhere on fsdp: parallel.mesh.auto_mesh_axes
    "single-device": {"data": 1, "fsdp": 1, "tensor": 1},  # one CPU or one GPU
    "tpu-v4-8": {"data": 1, "fsdp": 4, "tensor": 1},  # 4 chips on one host
    "tpu-v5e-8": {"data": 2, "fsdp": 4, "tensor": 1},  # 8 chips on one host
}


# ---------------------------------------------------------------------------------------
# Sections.
@dataclasses.dataclass(frozen=True)
class DataSection:
    """The SFT problem pool and a small held-out set at the same levels."""

    num_train: int = 2000
    num_sft_eval: int = 64  # held-out problems at the training levels (SFT eval loss / accuracy)
    train_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # over task_options, e.g. {steps: "2-5"}
    seed: int = 1

    def __post_init__(self):
        require(self.num_train >= 1, f"data.num_train must be >= 1, got {self.num_train}")
        require(self.num_sft_eval >= 0, f"data.num_sft_eval must be >= 0, got {self.num_sft_eval}")


@dataclasses.dataclass(frozen=True)
class WarmStartSection:
    """How the SFT demonstrations are made.

    `task_trace`: the task's own rule-based trace (GF: `strategy` forward | backward | mixed);
    `tailor`, `rule_based`, `four_star`: the primitives pipeline (tailor_jax.primitives);
    `redistill`: RL a rule_based run (the teacher stage), then its correct samples on the SFT
    prompts (options: samples_per_question, temperature, max_new_tokens, seed, chunk).
    """

    method: Literal["task_trace", "tailor", "rule_based", "four_star", "redistill"] = "task_trace"
    strategy: str | None = None  # task_trace: the task's `strategy` option (GF only)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # passed to the primitives pipeline


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """The held-out evaluation of every trained model (greedy accuracy, optional pass@k)."""

    levels: tuple[int, ...] = ()
    per_level: int = 50
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # over task_options
    seed: int = 2
    max_new_tokens: int = 256
    pass_k: int = 0  # k samples per problem at `temperature` for pass@k (0: off)
    temperature: float = 1.0

    def __post_init__(self):
        require(self.per_level >= 1, f"eval.per_level must be >= 1, got {self.per_level}")
        require(self.max_new_tokens >= 1, f"eval.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(self.pass_k >= 0 and self.pass_k != 1, f"eval.pass_k must be 0 (off) or >= 2, got {self.pass_k}")
        require(self.temperature > 0, f"eval.temperature must be > 0, got {self.temperature}")


def derived_seed(seed: int, name: str) -> int:
    """A stage's 31-bit seed from the run's `seed` (independent streams per stage)."""
    import hashlib

    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16) % 2**31


@dataclasses.dataclass(frozen=True)
class RunConfig:
    run_dir: str
    # One seed for everything random in training: when set it replaces data.seed (problems),
    # sft.seed (init, data order), grpo.seed (prompts, rollouts), the warm start's seed. The
    # held-out test set (eval.seed) stays fixed so that seeds are compared on the same problems.
    seed: int | None = None
    task: str = "gf"  # a name in the task registry (tasks.TASK_MODULES)
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # shared by every stage
    prompt_style: Literal["plain", "chat"] = "plain"
    think_prefill: bool = False
    pretrained: str | None = None  # a local Hugging Face checkpoint: SFT starts from it and uses its tokenizer
    mesh_preset: str = "auto"
    mesh: dict[str, Any] | None = None  # explicit mesh (MeshConfig keys); wins over mesh_preset
    data: DataSection = dataclasses.field(default_factory=DataSection)
    warm_start: WarmStartSection = dataclasses.field(default_factory=WarmStartSection)
    sft: dict[str, Any] = dataclasses.field(default_factory=dict)  # SFTConfig keys (run_dir and data files are set here)
    grpo: dict[str, Any] | None = dataclasses.field(default_factory=dict)  # GRPOConfig keys; null: no RL stage
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    report: bool = True
    device_memory_gib: float | None = None  # per-device memory for the memory plan (null: detected; CPU: unchecked)
    # redistill: finished runs to take the teacher from instead of training it (the first whose
    # data, warm start, SFT and GRPO stages hash as the teacher's: the same config, rule_based);
    # `tailor-jax study` fills it in with the study's rule_based cells. Paths are not hashed.
    teacher_from: tuple[str, ...] = ()

    def __post_init__(self):
        from tailor_jax.tasks import TASK_MODULES

        require(self.task in TASK_MODULES,
                f"config key 'task' must be one of {', '.join(map(repr, TASK_MODULES))}, got {self.task!r}")
        require(bool(self.eval.levels), "eval.levels must list at least one difficulty level, e.g. [6, 7, 8, 9]")
        require(self.mesh_preset in MESH_PRESETS, f"mesh_preset must be one of {', '.join(MESH_PRESETS)}, got {self.mesh_preset!r}")
        for name, section in (("sft", self.sft), ("grpo", self.grpo or {})):
            for key in ("run_dir", "init"):
                require(key not in section, f"{name}.{key} is set by `tailor-jax run` (from run_dir); remove it")
        require("task" not in (self.grpo or {}), "grpo.task is the run's `task`; remove it")
        require(self.warm_start.method != "redistill" or self.grpo is not None,
                "warm_start.method redistill RL-trains its teacher with the grpo section; give one (grpo is null)")
        require(not self.teacher_from or self.warm_start.method == "redistill",
                f"teacher_from applies to warm_start.method redistill only, not {self.warm_start.method}; remove it")
        if self.warm_start.method == "redistill":
            unknown = sorted(set(self.warm_start.options) - set(REDISTILL_OPTIONS))
            require(not unknown, f"warm_start.options {unknown} do not apply to redistill; it takes {', '.join(REDISTILL_OPTIONS)}")
        if self.seed is not None:
            require(0 <= self.seed < 2**31, f"seed must be in [0, 2^31), got {self.seed}")
            self._derive_seeds()

    def _derive_seeds(self) -> None:  # frozen: set through object.__setattr__, once, at construction
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("data", dataclasses.replace(self.data, seed=derived_seed(self.seed, "data")))
        set_("sft", {**self.sft, "seed": derived_seed(self.seed, "sft")})
        if self.grpo is not None:
            set_("grpo", {**self.grpo, "seed": derived_seed(self.seed, "grpo")})
        if self.warm_start.method in ("tailor", "redistill"):
            options = {**self.warm_start.options, "seed": derived_seed(self.seed, "warm_start")}
            set_("warm_start", dataclasses.replace(self.warm_start, options=options))


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    return config_from_dict(RunConfig, apply_overrides(read_yaml(path), overrides))


def mesh_dict(cfg: RunConfig) -> dict[str, Any]:
    from tailor_jax.parallel.mesh import auto_mesh_axes

    if cfg.mesh is not None:
        return dict(cfg.mesh)
    preset = MESH_PRESETS[cfg.mesh_preset]
    return dict(preset) if preset is not None else auto_mesh_axes()


def stage_dir(cfg: RunConfig, stage: str) -> Path:
    return Path(cfg.run_dir) / stage


def model_dir(cfg: RunConfig, stage: str) -> Path:
    """The exported Hugging Face-format model (with tokenizer) of a training stage."""
    return stage_dir(cfg, stage) / "model"


def run_stages(cfg: RunConfig) -> tuple[str, ...]:
    """The stages of this run, in order (`teacher` only for the redistill warm start)."""
    if cfg.warm_start.method == "redistill":
        return (STAGES[0], "teacher", *STAGES[1:])
    return STAGES


def trained_models(cfg: RunConfig) -> list[str]:
    return ["sft"] + (["grpo"] if cfg.grpo is not None else [])


def teacher_config(cfg: RunConfig) -> RunConfig:
    """redistill's teacher: the same run with the rule_based warm start, in RUN_DIR/teacher/."""
    return dataclasses.replace(cfg, run_dir=str(stage_dir(cfg, "teacher")), warm_start=WarmStartSection(method="rule_based"),
                               report=False, teacher_from=())


# ---------------------------------------------------------------------------------------
# The trainer configs a run resolves to.
def sft_config(cfg: RunConfig):
    """The SFTConfig of the run (validated), with data files inside the run directory."""
    from tailor_jax.train.sft import SFTConfig

    section = dict(cfg.sft)
    data = {
        **section.get("data", {}),
        "task": cfg.task,
        "task_options": dict(cfg.task_options),
        "train_file": str(stage_dir(cfg, "warm_start") / "sft.jsonl"),
        "eval_file": str(stage_dir(cfg, "data") / "sft_eval.jsonl"),
        "prompt_style": cfg.prompt_style,
        "think_prefill": cfg.think_prefill,
    }
    section.update(run_dir=str(stage_dir(cfg, "sft")), data=data)
    section.setdefault("mesh", mesh_dict(cfg))
    _with_device_memory(cfg, section)
    if cfg.pretrained is not None:
        section["model"] = {**section.get("model", {}), "pretrained": cfg.pretrained}
        section["tokenizer"] = {**section.get("tokenizer", {}), "path": cfg.pretrained}
    return _section_config(SFTConfig, section, "sft")


def grpo_config(cfg: RunConfig):
    """The GRPOConfig of the run (validated), initialised from the exported SFT model."""
    from tailor_jax.train.grpo import GRPOConfig

    section = dict(cfg.grpo or {})
    section.update(
        run_dir=str(stage_dir(cfg, "grpo")), init=str(model_dir(cfg, "sft")), task=cfg.task,
        task_options={**cfg.task_options, **section.get("task_options", {})},
        prompt_style=cfg.prompt_style, think_prefill=cfg.think_prefill,
        eval={"exclude_file": str(stage_dir(cfg, "data") / "train.jsonl"), **section.get("eval", {})},
    )
    section.setdefault("mesh", mesh_dict(cfg))
    _with_device_memory(cfg, section)
    return _section_config(GRPOConfig, section, "grpo")


def _with_device_memory(cfg: RunConfig, section: dict) -> None:
    if cfg.device_memory_gib is not None:
        section["memory"] = {"device_memory_gib": cfg.device_memory_gib, **section.get("memory", {})}


def _section_config(cls, section: dict, name: str):
    try:
        return config_from_dict(cls, section)
    except TailorError as err:
        raise TailorError(f"{name}: {err}") from None
