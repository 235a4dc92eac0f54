"""The Tailor pipeline's configs, stage results and shared stage helpers: stage directories,
JSON artefacts, the per-stage done markers (the stage cache's `stage.json` holding the hash of the
settings a stage's output depends on; an older `done.json` still counts), the question pool and
the SFT-set writer."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from tailor_jax import atomic
from tailor_jax.config import config_hash, config_to_dict, require
from tailor_jax.data.jsonl import read_jsonl, write_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.tailor import metrics as metrics_lib
from tailor_jax.tailor.metrics import Example
from tailor_jax.tailor.selection import PRIMITIVE_TERMS
from tailor_jax.stage_cache import stage_status, write_stage
from tailor_jax.tasks import Task, get_task

log = logging.getLogger(__name__)

STAGES = ("analyse", "discover", "synthesize", "curate")


# --- config ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AnalyseConfig:
    num_questions: int = 32  # pool questions the student answers
    samples_per_question: int = 4
    max_new_tokens: int = 256
    temperature: float = 1.0
    max_failures: int = 16  # failure traces kept for the teacher

    def __post_init__(self):
        require(self.num_questions >= 1 and self.samples_per_question >= 1, "analyse.num_questions and samples_per_question must be >= 1")
        require(self.max_new_tokens >= 1, f"analyse.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        require(self.temperature >= 0, f"analyse.temperature must be >= 0, got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    path: str | None = None  # a local Hugging Face-format checkpoint; null: no teacher proposals
    num_generations: int = 2  # proposal generations sampled
    proposals_per_generation: int = 3  # strategies asked for in each
    proposal_max_new_tokens: int = 128
    failures_in_prompt: int = 3
    extra_proposals: list[str] = dataclasses.field(default_factory=list)  # your own z's, run by the teacher
    questions_per_primitive: int = 16  # questions each teacher primitive is demonstrated on
    max_new_tokens: int = 256
    temperature: float = 1.0

    def __post_init__(self):
        require(self.num_generations >= 0 and self.proposals_per_generation >= 1, "teacher.num_generations must be >= 0 and proposals_per_generation >= 1")
        require(self.questions_per_primitive >= 1, "teacher.questions_per_primitive must be >= 1")
        require(self.max_new_tokens >= 1 and self.proposal_max_new_tokens >= 1, "teacher max_new_tokens must be >= 1")
        require(not self.extra_proposals or self.path is not None, "teacher.extra_proposals needs teacher.path (the model that runs them)")


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    min_accuracy: float = 1.0  # drop primitives whose verified accuracy is lower
    max_per_question: int = 1  # demonstrations per question in the SFT set
    dedup_threshold: float = 0.98  # cosine similarity at which two traces are near-duplicates
    distinct_weight: float = 1.0  # selection objective (selection.py): weight of log geometric mean of distinct-1/2/3
    coverage_weight: float = 1.0  # ... of log reasoning states reached
    diversity_weight: float = 1.0  # ... of log mean pairwise embedding distance
    primitive_weight: float = 1.0  # ... of log number of primitives
    primitive_term: str = "count"  # "count": log number of primitives; "entropy": entropy of the mix (an even mix)
    fit_weight: float = 0.0  # ... of the set's mean z-scored student log-likelihood (needs a student)
    max_length_words: int | None = None  # drop longer demonstrations

    def __post_init__(self):
        require(0.0 <= self.min_accuracy <= 1.0, f"curate.min_accuracy must be in [0, 1], got {self.min_accuracy}")
        require(self.max_per_question >= 1, f"curate.max_per_question must be >= 1, got {self.max_per_question}")
        require(0.0 < self.dedup_threshold <= 1.0, f"curate.dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        weights = (self.distinct_weight, self.coverage_weight, self.diversity_weight, self.primitive_weight, self.fit_weight)
        require(min(weights) >= 0, "curate weights must be >= 0")
        require(self.primitive_term in PRIMITIVE_TERMS,
                f"curate.primitive_term must be one of {list(PRIMITIVE_TERMS)}, got {self.primitive_term!r}")


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    names: list[str] = dataclasses.field(default_factory=lambda: ["rule_based", "four_star"])
    policy: str | None = None  # redistill: a trained policy (HF-format directory + tokenizer)
    samples_per_question: int = 4
    max_new_tokens: int = 256
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class TailorConfig:
    run_dir: str
    task: str = "gf"
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_file: str | None = None  # questions from a JSONL of task records; null: generated
    num_questions: int = 256  # size of the question pool
    budget: int = 128  # SFT set size (the baselines get the same)
    seed: int = 0
    student: str | None = None  # the policy to be trained (HF-format dir); null: from scratch
    prompt_style: Literal["plain", "chat"] = "plain"
    analyse: AnalyseConfig = dataclasses.field(default_factory=AnalyseConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    curate: CurateConfig = dataclasses.field(default_factory=CurateConfig)
    baselines: BaselinesConfig = dataclasses.field(default_factory=BaselinesConfig)

    def __post_init__(self):
        require(self.num_questions >= 1, f"num_questions must be >= 1, got {self.num_questions}")
        require(self.budget >= 1, f"budget must be >= 1, got {self.budget}")


# --- stage outputs -------------------------------------------------------------------------------
@dataclasses.dataclass
class AnalyseResult:
    skipped: str | None  # why analyse did not run (no student), else None
    accuracy: float | None = None
    accuracy_by_level: dict[str, float] = dataclasses.field(default_factory=dict)
    failures: list[dict] = dataclasses.field(default_factory=list)  # {"id", "question", "completion"}
    metrics: dict | None = None  # diversity/coverage of the student's own samples


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    source: str  # "library" | "composition" | "teacher"
    description: str  # z
    tags: tuple[str, ...] = ()


@dataclasses.dataclass
class DiscoverResult:
    candidates: list[Candidate]
    rejected: list[dict]  # {"text", "reason"}


@dataclasses.dataclass
class Demo:
    record: dict
    primitive: str
    source: str
    completion: str
    z: str


@dataclasses.dataclass
class SynthesizeResult:
    demos: list[Demo]


@dataclasses.dataclass
class CurateResult:
    examples: list[Example]
    report: dict


# --- helpers ----------------------------------------------------------------------------------------
def say(message: str) -> None:
    print(f"tailor-jax tailor: {message}", file=sys.stderr, flush=True)


def write_json(path: Path, data: Any) -> None:
    atomic.write_json(path, data, ensure_ascii=False, default=str)


def read_json(path: Path, stage: str) -> Any:
    if not path.is_file():
        raise TailorError(f"{path} is missing; run the {stage} stage first (tailor-jax tailor CONFIG --stage {stage})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TailorError(f"{path} is not valid JSON ({err.msg}); rerun the {stage} stage") from None


def stage_dir(cfg: TailorConfig, stage: str) -> Path:
    path = Path(cfg.run_dir) / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def stage_settings(cfg: TailorConfig, stage: str) -> dict:
    """The config values a stage's output depends on (its own and its predecessors')."""
    base = {"task": cfg.task, "task_options": cfg.task_options, "train_file": cfg.train_file,
            "num_questions": cfg.num_questions, "seed": cfg.seed, "student": cfg.student, "prompt_style": cfg.prompt_style}
    settings = {"analyse": {**base, "analyse": config_to_dict(cfg.analyse)}}
    settings["discover"] = {**settings["analyse"], "teacher": config_to_dict(cfg.teacher)}
    settings["synthesize"] = settings["discover"]
    curate = config_to_dict(cfg.curate)
    if curate["primitive_term"] == "count":  # the default (added 2026-12-07): earlier curate stages still match
        del curate["primitive_term"]
    settings["curate"] = {**settings["synthesize"], "budget": cfg.budget, "curate": curate}
    return settings[stage]


def mark_done(cfg: TailorConfig, stage: str) -> None:
    write_stage(stage_dir(cfg, stage), {"hash": config_hash(stage_settings(cfg, stage)), "status": "done"})


def is_done(cfg: TailorConfig, stage: str) -> bool:
    """Done with the same settings (the stage cache: `stage.json`, or an older `done.json`)."""
    return stage_status(Path(cfg.run_dir) / stage, {config_hash(stage_settings(cfg, stage))}) == "done"



def make_task(cfg: TailorConfig) -> Task:
    return get_task(cfg.task, **cfg.task_options)


def load_questions(cfg: TailorConfig, task: Task) -> list[dict]:
    """The question pool: `run_dir/questions.jsonl` once written, else generated/read and written."""
    path = Path(cfg.run_dir) / "questions.jsonl"
    if path.is_file():
        records = list(read_jsonl(path))
        if len(records) == cfg.num_questions and all(r.get("task") == cfg.task for r in records):
            return records
    if cfg.train_file:
        records = list(islice(read_jsonl(cfg.train_file), cfg.num_questions))
        if len(records) < cfg.num_questions:
            raise TailorError(f"{cfg.train_file} has {len(records)} records; num_questions is {cfg.num_questions}")
        wrong = [r.get("task") for r in records if r.get("task") != cfg.task]
        if wrong:
            raise TailorError(f"{cfg.train_file} holds {wrong[0]!r} records but the config's task is {cfg.task!r}")
    else:
        records = list(task.generate(cfg.num_questions, cfg.seed))
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    write_jsonl(path, records)
    return records


def sft_data_dir(cfg: TailorConfig) -> Path:
    """The TFDS data_dir of the run's SFT sets (`data.tfds_dir` for `tailor-jax sft`)."""
    return Path(cfg.run_dir) / "tfds"


def write_sft_set(cfg: TailorConfig, name: str, examples: list[Example], jsonl: Path) -> None:
    """An SFT set as JSONL and, when not empty, as TFDS config `name` under `sft_data_dir`."""
    from tailor_jax.data import tfds_builders

    lines = [metrics_lib.example_to_json(ex) for ex in examples]
    write_jsonl(jsonl, lines)
    if lines:
        tfds_builders.write_sft_set(cfg.task, name, lines, sft_data_dir(cfg))
    else:  # no stale set from an earlier run
        shutil.rmtree(tfds_builders.dataset_path(cfg.task, name, sft_data_dir(cfg)), ignore_errors=True)
