"""`tailor-jax run CONFIG.yaml`: data -> warm start -> SFT -> GRPO -> evaluation -> report.

Everything lives in one run directory, one sub-directory per stage:

    RUN_DIR/config.yaml              the resolved run config
    RUN_DIR/data/                    train.jsonl (SFT problem pool), sft_eval.jsonl (held out)
    RUN_DIR/warm_start/              sft.jsonl (demonstrations with `completion`), stats.json
    RUN_DIR/sft/                     the SFT trainer's run dir; model/ (HF format + tokenizer)
    RUN_DIR/grpo/                    the GRPO trainer's run dir; model/
    RUN_DIR/eval/                    records.jsonl (held-out), <model>.json per evaluated model
    RUN_DIR/report.md, RUN_DIR/plots/*.png

Each stage writes `<stage>/stage.json` = {"hash", "status": "running" | "done", ...}. The hash
covers the stage's own config (not where it runs: paths and the mesh are left out) and the hash
of the stage before it, so a stage is skipped when it is done with the same hash, resumed when
it was interrupted with the same hash (the trainers restore their latest checkpoint), and
started afresh (its directory cleared) when its config or anything upstream changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from tailor_jax.config import apply_overrides, config_from_dict, config_hash, config_to_dict, dump_config, read_yaml, require
from tailor_jax.errors import TailorError
from tailor_jax.tasks import problem_key

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
# Config.
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
    task: Literal["gf", "kk", "igsm"] = "gf"
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

    def __post_init__(self):
        require(bool(self.eval.levels), "eval.levels must list at least one difficulty level, e.g. [6, 7, 8, 9]")
        require(self.mesh_preset in MESH_PRESETS, f"mesh_preset must be one of {', '.join(MESH_PRESETS)}, got {self.mesh_preset!r}")
        for name, section in (("sft", self.sft), ("grpo", self.grpo or {})):
            for key in ("run_dir", "init"):
                require(key not in section, f"{name}.{key} is set by `tailor-jax run` (from run_dir); remove it")
        require("task" not in (self.grpo or {}), "grpo.task is the run's `task`; remove it")
        require(self.warm_start.method != "redistill" or self.grpo is not None,
                "warm_start.method redistill RL-trains its teacher with the grpo section; give one (grpo is null)")
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
    from tailor_jax.train.grpo_trainer import GRPOConfig

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


def memory_plan(cfg: RunConfig, say: Callable[[str], None]) -> None:
    """Each training stage's per-device memory estimate (train.memory_plan); one TailorError line
    (exit 2) when one exceeds the device's memory. The GRPO stage trains the SFT stage's model."""
    from tailor_jax.train import memory_plan as mp

    sft = sft_config(cfg)
    limit_gib, limit_from = mp.device_limit_gib(cfg.device_memory_gib or sft.memory.device_memory_gib)
    if limit_gib is None:  # compiling every stage takes a while on CPU: only against a known limit
        say(f"memory plan: not estimated: device memory {limit_from}; benchmarks/memory.py prints estimates")
        return
    model_cfg, why = mp.sft_model_config(sft)
    stages = [("sft", sft)] + ([("grpo", grpo_config(cfg))] if cfg.grpo is not None else [])
    mp.run_memory_plan(stages, model_cfg, why, limit_gib, limit_from, say)


def _section_config(cls, section: dict, name: str):
    try:
        return config_from_dict(cls, section)
    except TailorError as err:
        raise TailorError(f"{name}: {err}") from None


def check_batches(cfg: RunConfig) -> None:
    """Batch sizes must split evenly over the data-parallel devices (checked here so that a bad
    config fails in `--dry-run`, not after the SFT stage). A mesh with a -1 axis is resolved on
    this process's devices; a fixed one is checked as written (a TPU config dry-runs anywhere)."""
    import jax

    from tailor_jax.parallel.mesh import MeshConfig

    mesh = mesh_dict(cfg)
    if mesh.get("rules"):
        return  # custom rules may map the batch elsewhere: checked by the trainers
    config = MeshConfig(**mesh)
    if -1 in config.sizes():
        devices = jax.devices()
        data, fsdp, _ = config.resolve(len(devices))
        where = f"mesh {mesh} on {len(devices)} {devices[0].platform.upper()} devices"
        if devices[0].platform == "cpu":
            where += " (TAILOR_CPU_DEVICES=N sets their count)"
    else:
        data, fsdp, _ = config.sizes()
        where = f"mesh {mesh}"
    shards = data * fsdp
    sft = sft_config(cfg)
    if (sft.batch_size // sft.accum_steps) % shards:
        raise TailorError(f"sft.batch_size / sft.accum_steps = {sft.batch_size // sft.accum_steps} is not a multiple of the "
                          f"{shards}-way data parallelism of {where}; change sft.batch_size or the mesh")
    if cfg.grpo is not None:
        grpo = grpo_config(cfg)
        micro = grpo.dash.micro_batch_size or grpo.rollout.prompts_per_step * grpo.rollout.num_generations
        if micro % shards:
            raise TailorError(f"grpo rows per micro-batch ({micro}) are not a multiple of the {shards}-way data parallelism "
                              f"of {where}; change grpo.dash.micro_batch_size or the rollout size")
        generation = grpo.rollout.generation_batch_size
        if generation % shards:
            raise TailorError(f"grpo.rollout.generation_batch_size ({generation}) is not a multiple of the {shards}-way data "
                              f"parallelism of {where}; use 0 (one sampler call) or a multiple of {shards}")


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


def run_stages(cfg: RunConfig) -> tuple[str, ...]:
    """The stages of this run, in order (`teacher` only for the redistill warm start)."""
    if cfg.warm_start.method == "redistill":
        return (STAGES[0], "teacher", *STAGES[1:])
    return STAGES


def teacher_config(cfg: RunConfig) -> RunConfig:
    """redistill's teacher: the same run with the rule_based warm start, in RUN_DIR/teacher/."""
    return dataclasses.replace(cfg, run_dir=str(stage_dir(cfg, "teacher")), warm_start=WarmStartSection(method="rule_based"),
                               report=False)


def _grpo_hash_part(cfg: RunConfig) -> dict:
    grpo = _without_default_guard(_without(config_to_dict(grpo_config(cfg)), "run_dir", "init", "wandb", "memory"))
    grpo["eval"] = _without(grpo["eval"], "exclude_file")
    if not grpo["rollout"]["generation_batch_size"]:  # 0 (added 2026-12-06): older hashes still match
        grpo["rollout"] = _without(grpo["rollout"], "generation_batch_size")
    if not grpo["model"]:  # the runtime model options (added 2026-12-06): unset, older hashes still match
        grpo = _without(grpo, "model")
    return grpo


# ---------------------------------------------------------------------------------------
# Stage bookkeeping.
def read_stage(directory: Path) -> dict | None:
    path = directory / "stage.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn write: treat as never started


def write_stage(directory: Path, info: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "stage.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(directory / "stage.json")


def stage_status(directory: Path, wanted_hashes: Collection[str]) -> Literal["done", "resume", "fresh"]:
    info = read_stage(directory)
    if info is None or info.get("hash") not in wanted_hashes:
        return "fresh"
    return "done" if info.get("status") == "done" else "resume"


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Write a directory through `write(tmp)`, then swap it in (a reader never sees half of it)."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def export_model(model, tokenizer, directory: Path) -> None:
    from tailor_jax.data import tokenizer as tok_lib
    from tailor_jax.model import save_pretrained

    def write(tmp: Path) -> None:
        save_pretrained(model, tmp)
        tok_lib.save_tokenizer(tokenizer, tmp)

    _atomic_dir(directory, write)


class Interrupted(Exception):
    """A trainer stopped early on SIGINT/SIGTERM after saving a checkpoint."""


# ---------------------------------------------------------------------------------------
# Stages. Each returns a one-line summary; artefacts go into its directory.
def run_data(cfg: RunConfig, out: Path) -> str:
    from itertools import islice

    from tailor_jax.data.jsonl import write_jsonl
    from tailor_jax.tasks import get_task

    task = get_task(cfg.task, **{**cfg.task_options, **cfg.data.train_options})
    train = list(islice(task.generate(cfg.data.num_train, cfg.data.seed), cfg.data.num_train))
    seen = {problem_key(r) for r in train}
    want = cfg.data.num_sft_eval
    held_out = [r for r in islice(task.generate(3 * want + 10, cfg.data.seed + 1), 3 * want + 10) if problem_key(r) not in seen]
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "sft_eval.jsonl", held_out[:want])
    return f"{len(train)} training problems, {min(want, len(held_out))} held out"


def warm_start_records(cfg: RunConfig, records: list[dict]) -> list[dict]:
    """SFT demonstrations (records with `completion` and `primitive`) for the training problems."""
    from tailor_jax.tasks import get_task

    method = cfg.warm_start.method
    if method == "redistill":
        return _redistill_records(cfg, records)
    if method == "task_trace":
        options = dict(cfg.task_options)
        if cfg.warm_start.strategy is not None:
            if cfg.task != "gf":
                raise TailorError(f"warm_start.strategy applies to the gf task only; remove it for {cfg.task}")
            options["strategy"] = cfg.warm_start.strategy
        task = get_task(cfg.task, **options)
        name_of = _trace_namer(cfg.task, cfg.warm_start.strategy)
        return [{**r, "completion": task.target(r), "primitive": name_of(r)} for r in records]
    return _primitive_warm_start(cfg, records)


def _trace_namer(task: str, strategy: str | None) -> Callable[[dict], str]:
    if task == "gf" and strategy == "mixed":
        from tailor_jax.tasks.gf import mixed_strategy

        return mixed_strategy
    name = strategy or "canonical"
    return lambda record: name


def _redistill_records(cfg: RunConfig, records: list[dict]) -> list[dict]:
    """The teacher's (RL-trained rule_based policy's) verified-correct samples on the SFT prompts,
    up to one demonstration per prompt: the base model is then SFT-ed on about as many as the
    other warm starts give (fewer where the teacher fails)."""
    from tailor_jax.primitives import baselines
    from tailor_jax.primitives.metrics import example_to_json
    from tailor_jax.tasks import get_task

    options = {"samples_per_question": 1, "max_new_tokens": cfg.eval.max_new_tokens, **cfg.warm_start.options}
    teacher = model_dir(teacher_config(cfg), "grpo")
    examples = baselines.redistill(get_task(cfg.task, **cfg.task_options), records, len(records), teacher,
                                   prompt_style=cfg.prompt_style, **options)
    if not examples:
        raise TailorError(f"redistill: the teacher ({teacher}) solved none of the {len(records)} SFT prompts; train it longer "
                          "(sft.steps, grpo.steps) or sample more (warm_start.options.samples_per_question)")
    return [example_to_json(example) for example in examples]


def run_teacher(cfg: RunConfig, out: Path) -> str:
    """redistill's teacher run (data -> rule_based warm start -> SFT -> GRPO), resumable like any run."""
    summaries = execute(teacher_config(cfg), only=TEACHER_STAGES, log=lambda message: _say(f"teacher: {message}"))
    return f"rule_based teacher: {summaries['grpo']}"


def _primitive_warm_start(cfg: RunConfig, records: list[dict]) -> list[dict]:
    """The Tailor pipeline (or a baseline); its artefacts go to `warm_start/tailor/`."""
    from tailor_jax.primitives import pipeline as primitives_pipeline

    return primitives_pipeline.warm_start(
        cfg.task, records, method=cfg.warm_start.method, task_options=dict(cfg.task_options),
        run_dir=str(stage_dir(cfg, "warm_start") / "tailor"), prompt_style=cfg.prompt_style, **cfg.warm_start.options,
    )


def diversity_stats(demos: Sequence[dict]) -> dict[str, Any]:
    """Counts per primitive, distinct-1/2/3 over whitespace tokens of the completions, mean length."""
    counts: dict[str, int] = {}
    ngrams: dict[int, set] = {1: set(), 2: set(), 3: set()}
    totals = {1: 0, 2: 0, 3: 0}
    lengths = []
    for demo in demos:
        name = str(demo.get("primitive", "unknown"))
        counts[name] = counts.get(name, 0) + 1
        words = demo["completion"].split()
        lengths.append(len(words))
        for n in ngrams:
            grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
            ngrams[n].update(grams)
            totals[n] += len(grams)
    stats: dict[str, Any] = {"num_demos": len(demos), "primitives": dict(sorted(counts.items())),
                             "num_primitives": len(counts)}
    for n in ngrams:
        stats[f"distinct_{n}"] = len(ngrams[n]) / totals[n] if totals[n] else 0.0
    stats["mean_words"] = sum(lengths) / len(lengths) if lengths else 0.0
    return stats


def run_warm_start(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.data.jsonl import read_jsonl, write_jsonl

    records = list(read_jsonl(stage_dir(cfg, "data") / "train.jsonl"))
    demos = warm_start_records(cfg, records)
    if not demos:
        raise TailorError("the warm start produced no demonstrations; check warm_start and data settings")
    stats = diversity_stats(demos)
    write_jsonl(out / "sft.jsonl", demos)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    mix = ", ".join(f"{k} {v}" for k, v in stats["primitives"].items())
    return f"{len(demos)} demonstrations ({cfg.warm_start.method}: {mix}); distinct-2 {stats['distinct_2']:.3f}"


def run_sft(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.train import sft as sft_lib
    from tailor_jax.train.state import merge_model

    sft_cfg = sft_config(cfg)
    result = sft_lib.train(sft_cfg)
    if int(result.state.step) < sft_cfg.steps:
        raise Interrupted(f"SFT stopped at step {int(result.state.step)} of {sft_cfg.steps}")
    export_model(merge_model(result.graphdef, result.state), result.tokenizer, model_dir(cfg, "sft"))
    return _metric_summary(result.metrics, ("loss", "eval/loss", "eval/acc"), f"{sft_cfg.steps} steps")


def run_grpo(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.train import grpo_trainer as grpo_lib
    from tailor_jax.train.state import merge_model

    grpo_cfg = grpo_config(cfg)
    result = grpo_lib.train(grpo_cfg)
    if result.history and result.history[-1]["step"] < grpo_cfg.steps:
        raise Interrupted(f"GRPO stopped at step {result.history[-1]['step']} of {grpo_cfg.steps}")
    export_model(merge_model(result.graphdef, result.state), result.tokenizer, model_dir(cfg, "grpo"))
    return _metric_summary(result.metrics, ("reward", "eval/acc"), f"{grpo_cfg.steps} steps")


def trained_models(cfg: RunConfig) -> list[str]:
    return ["sft"] + (["grpo"] if cfg.grpo is not None else [])


def eval_records(cfg: RunConfig) -> list[dict]:
    """The held-out evaluation problems: per level, none of them in the SFT problem pool."""
    from tailor_jax.eval.accuracy import level_records

    options = {**cfg.task_options, **cfg.eval.task_options}
    return level_records(cfg.task, options, cfg.eval.levels, cfg.eval.per_level, cfg.eval.seed, train_keys(cfg))


def train_keys(cfg: RunConfig) -> set[str]:
    from tailor_jax.data.jsonl import read_jsonl

    return {problem_key(r) for r in read_jsonl(stage_dir(cfg, "data") / "train.jsonl")}


def run_eval(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.data.jsonl import read_jsonl, write_jsonl
    from tailor_jax.eval import evaluate as eval_lib
    from tailor_jax.tasks import get_task

    records_path = out / "records.jsonl"
    if not records_path.is_file():
        write_jsonl(records_path, eval_records(cfg))
    records = list(read_jsonl(records_path))
    task = get_task(cfg.task, **{**cfg.task_options, **cfg.eval.task_options})
    parts = []
    for name in trained_models(cfg):
        result_path = out / f"{name}.json"
        if not result_path.is_file():  # each model's result is kept as soon as it exists
            result = eval_lib.evaluate_model(
                model_dir(cfg, name), task, records, prompt_style=cfg.prompt_style, think_prefill=cfg.think_prefill,
                max_new_tokens=cfg.eval.max_new_tokens, pass_k=cfg.eval.pass_k, temperature=cfg.eval.temperature,
                seed=cfg.eval.seed, mesh=mesh_dict(cfg),
            )
            eval_lib.write_result(result, result_path)
        result = json.loads(result_path.read_text())
        parts.append(f"{name} acc {result['acc']:.3f}")
    return f"{len(records)} held-out problems (levels {', '.join(map(str, cfg.eval.levels))}): " + ", ".join(parts)


def run_report(cfg: RunConfig, out: Path) -> str:
    from tailor_jax.eval import report as report_lib

    path = report_lib.write_report(Path(cfg.run_dir))
    return f"{path} and {len(list((Path(cfg.run_dir) / 'plots').glob('*.png')))} plots"


def _metric_summary(metrics: dict, keys: Sequence[str], head: str) -> str:
    shown = [f"{k} {metrics[k]:.3f}" for k in keys if k in metrics]
    return ", ".join([head, *shown])


STAGE_FUNCTIONS: dict[str, Callable[[RunConfig, Path], str]] = {
    "data": run_data, "teacher": run_teacher, "warm_start": run_warm_start, "sft": run_sft, "grpo": run_grpo,
    "eval": run_eval, "report": run_report,
}


# ---------------------------------------------------------------------------------------
# The plan and the driver.
@dataclasses.dataclass(frozen=True)
class PlannedStage:
    name: str
    hash: str | None  # None: always runs (report)
    status: Literal["done", "resume", "fresh", "always"]


def check_schedules(cfg: RunConfig) -> None:
    """The trainers' learning-rate schedules build (e.g. warmup within the steps), before any stage runs."""
    from tailor_jax.train.optim import learning_rate_schedule

    sections = [("sft", sft_config(cfg), 1)]
    if cfg.grpo is not None:
        grpo = grpo_config(cfg)
        sections.append(("grpo", grpo, grpo.loss.num_iterations))
    for name, section, updates_per_step in sections:
        try:
            learning_rate_schedule(section.optimizer, section.steps * updates_per_step)
        except TailorError as err:
            raise TailorError(f"{name}.optimizer: {err}") from None


def check_problem_sets(cfg: RunConfig) -> None:
    """Every problem set the run draws from can be generated: one problem per evaluation level
    (e.g. iGSM's test split has no 2-op templates) and per GRPO curriculum stage, before any
    stage runs, instead of an error after training."""
    from tailor_jax.eval.accuracy import level_records
    from tailor_jax.tasks import get_task
    from tailor_jax.train.grpo_trainer import task_options_at

    sets = [("eval", cfg.task_options | cfg.eval.task_options, cfg.eval.levels)]
    if cfg.grpo is not None:
        grpo = grpo_config(cfg)
        sets.append(("grpo.eval", grpo.task_options | grpo.eval.task_options, grpo.eval.levels))
        for start in [0] + [stage.start_step for stage in grpo.curriculum]:
            try:
                next(iter(get_task(grpo.task, **task_options_at(grpo, start)).generate(1, seed=0)))
            except TailorError as err:
                where = "grpo.task_options" if start == 0 else f"grpo.curriculum stage at step {start}"
                raise TailorError(f"{where}: {err}") from None
    for name, options, levels in sets:
        for level in levels:
            try:
                level_records(cfg.task, options, [level], 1, seed=0)
            except TailorError as err:
                raise TailorError(f"{name}.levels: level {level}: {err}") from None


def check_input_paths(cfg: RunConfig) -> None:
    """Every file or directory a stage reads that the run does not write itself exists and holds
    what the stage needs (the checkpoint's config.json, a tokenizer), before any stage runs."""
    sft = sft_config(cfg)
    model_key = "pretrained" if cfg.pretrained is not None else "sft.model.pretrained"
    tokenizer_key = "pretrained" if cfg.pretrained is not None else "sft.tokenizer.path"
    wanted = [(model_key, sft.model.pretrained, "config.json",
               "a local Hugging Face checkpoint directory (nothing is downloaded at run time: fetch it first)"),
              (tokenizer_key, sft.tokenizer.path, "tokenizer.json", "a directory with tokenizer.json (or null to train one)")]
    grpo = grpo_config(cfg) if cfg.grpo is not None else None
    if grpo is not None and grpo.train_file is not None:
        wanted.append(("grpo.train_file", grpo.train_file, None, "a JSONL file of problems"))
    for key, path, inside, what in wanted:
        if path is None:
            continue
        where = Path(path)
        if not where.exists():
            raise TailorError(f"{key}: {path} does not exist; give {what}")
        if inside is None and not where.is_file():
            raise TailorError(f"{key}: {path} is not a file; give {what}")
        if inside == "tokenizer.json" and not any((where / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise TailorError(f"{key}: {path} has no tokenizer.json; give {what}")
        if inside == "config.json" and not (where / inside).is_file():
            raise TailorError(f"{key}: {path} has no config.json; give {what}")


def _most_at_one_level(num: int, levels: int) -> int:
    """About the most of `num` problems, each at a level drawn uniformly from `levels`, that one
    level receives: the mean plus four standard deviations (exact when there is one level)."""
    if levels == 1:
        return num
    p = 1.0 / levels
    return math.ceil(num * p + 4.0 * math.sqrt(num * p * (1.0 - p)))


def check_pool_sizes(cfg: RunConfig) -> None:
    """Each pool the run generates fits the distinct problems its setting has, level by level
    (tasks that can count them: `max_distinct`), so that generation cannot run dry mid-stage."""
    from tailor_jax.tasks import get_task

    pools = [("data.num_train", cfg.task_options | cfg.data.train_options, cfg.data.num_train, None),
             ("data.num_sft_eval", cfg.task_options | cfg.data.train_options, 3 * cfg.data.num_sft_eval + 10, None)]
    pools += [("eval.per_level", cfg.task_options | cfg.eval.task_options, 2 * cfg.eval.per_level, level)
              for level in cfg.eval.levels]  # 2x: candidates, of which those in the SFT pool are left out
    if cfg.grpo is not None:
        grpo = grpo_config(cfg)
        pools += [("grpo.eval.per_level", grpo.task_options | grpo.eval.task_options, 2 * grpo.eval.per_level, level)
                  for level in grpo.eval.levels]
    level_option = {"kk": "people", "igsm": "op", "gf": "steps"}[cfg.task]
    for key, options, num, level in pools:
        if level is not None:
            options = {**options, level_option: int(level)}
        task = get_task(cfg.task, **options)
        if not hasattr(task, "max_distinct"):
            continue
        lo, hi = task.level_range()
        for at in range(lo, hi + 1):
            most = task.max_distinct(at)
            wanted = _most_at_one_level(num, hi - lo + 1)
            if most is None or wanted <= most:
                continue
            if level is not None:
                spread = f"{key} {num // 2} draws {num} candidates"
            elif hi > lo:
                spread = f"{num} problems over {level_option} {lo}-{hi} put up to {wanted}"
            else:
                spread = f"the pool asks for {num}"
            fits = max((n for n in range(num, 0, -1) if _most_at_one_level(n, hi - lo + 1) <= most), default=0) if hi > lo else most
            fix = (f"lower {key} to {fits if key != 'data.num_sft_eval' else max((fits - 10) // 3, 0)} or leave "
                   f"{level_option}={at} out") if hi > lo else f"lower {key} to {most // 2 if level is not None else most}"
            raise TailorError(
                f"{key}: {cfg.task} at {level_option}={at} ({_setting(task)}) has at most {most} distinct problems, "
                f"but {spread} at that level; {fix}"
            )


def _setting(task) -> str:
    return ", ".join(f"{name} {getattr(task, name)}" for name in ("depth", "width") if hasattr(task, name))


def plan(cfg: RunConfig) -> list[PlannedStage]:
    check_batches(cfg)
    check_schedules(cfg)
    check_input_paths(cfg)
    check_problem_sets(cfg)
    check_pool_sizes(cfg)
    hashes = stage_hashes(cfg)
    accepted = accepted_hashes(cfg, hashes)
    stages = []
    for name in run_stages(cfg):
        if name == "grpo" and cfg.grpo is None or name == "report" and not cfg.report:
            continue
        if name == "report":
            stages.append(PlannedStage(name, None, "always"))
        else:
            stages.append(PlannedStage(name, hashes[name], stage_status(stage_dir(cfg, name), accepted[name])))
    return stages


_PLAN_WORDS = {"done": "skip (done)", "resume": "resume", "fresh": "run", "always": "run"}


def format_plan(cfg: RunConfig, stages: list[PlannedStage]) -> str:
    lines = [f"plan for {cfg.run_dir}:"]
    for i, stage in enumerate(stages, 1):
        tag = f"hash {stage.hash}" if stage.hash else ""
        lines.append(f"  [{i}/{len(stages)}] {stage.name:<10} {_PLAN_WORDS[stage.status]:<12} {tag}")
    return "\n".join(lines)


def format_resolved(cfg: RunConfig) -> str:
    """The run config and the trainer configs it resolves to (every default filled in), as YAML."""
    resolved = {"run": config_to_dict(cfg), "sft (resolved)": config_to_dict(sft_config(cfg))}
    if cfg.grpo is not None:
        resolved["grpo (resolved)"] = config_to_dict(grpo_config(cfg))
    return yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False)


def _say(message: str) -> None:
    print(f"tailor-jax run: {message}", file=sys.stderr, flush=True)


def execute(cfg: RunConfig, *, log: Callable[[str], None] = _say, only: Collection[str] | None = None) -> dict[str, str]:
    """Run every stage (of `only`, when given) that is not already done; returns {stage: summary}."""
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TailorError(f"run_dir {run_dir} is a file; give a directory")
    stages = [s for s in plan(cfg) if only is None or s.name in only]  # plan validates the whole config first
    from tailor_jax.train.memory_plan import device_limit_gib

    if device_limit_gib(cfg.device_memory_gib or sft_config(cfg).memory.device_memory_gib)[0] is not None:
        memory_plan(cfg, log)  # a known device: stop before any stage if one cannot fit
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    summaries: dict[str, str] = {}
    start_all = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        directory = stage_dir(cfg, stage.name)
        prefix = f"[{i}/{len(stages)}] {stage.name}"
        if stage.status == "done":
            summaries[stage.name] = read_stage(directory).get("summary", "")
            log(f"{prefix}: skipped (done, hash {stage.hash}): {summaries[stage.name]}")
            continue
        if stage.status == "fresh" and directory.exists():
            shutil.rmtree(directory)  # another config's (or a torn) output
        if stage.name != "report":
            previous = read_stage(directory) or {}
            write_stage(directory, {"hash": stage.hash, "status": "running", "seconds": previous.get("seconds", 0.0)})
        log(f"{prefix}: {'resuming' if stage.status == 'resume' else 'running'}")
        t0 = time.perf_counter()
        try:
            summary = STAGE_FUNCTIONS[stage.name](cfg, directory)
        except Interrupted as stop:
            log(f"{prefix}: {stop}; checkpoint saved, rerun the same command to continue")
            raise KeyboardInterrupt from None
        seconds = time.perf_counter() - t0
        if stage.name != "report":
            total = (read_stage(directory) or {}).get("seconds", 0.0) + seconds
            write_stage(directory, {"hash": stage.hash, "status": "done", "summary": summary, "seconds": total})
        summaries[stage.name] = summary
        log(f"{prefix}: done in {seconds:.1f}s: {summary}")
    log(f"finished in {time.perf_counter() - start_all:.1f}s" + (f"; report: {run_dir / 'report.md'}" if cfg.report else ""))
    return summaries


# ---------------------------------------------------------------------------------------
# CLI.
def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the whole pipeline: data, warm start, SFT, GRPO, eval, report")
    parser.add_argument("config", help="YAML run config (see configs/ and docs/run.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. grpo.steps=10")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, run nothing")
    parser.set_defaults(func=run)


def run(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    if args.dry_run:
        print(format_resolved(cfg), end="")
        print(format_plan(cfg, plan(cfg)))
        memory_plan(cfg, lambda line: print(line, file=sys.stderr))  # stdout stays the YAML and the plan
        return 0
    execute(cfg)
    return 0
