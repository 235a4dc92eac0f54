"""The Tailor pipeline: analyse -> discover -> synthesize -> curate, each a function with typed
inputs and outputs whose artefacts go to `<run_dir>/<stage>/`, so any stage can be rerun alone
from its predecessor's artefacts, and `run_pipeline` skips stages already done with the same
settings.

    run_dir/questions.jsonl              the question pool (generated or copied from train_file)
    run_dir/<stage>/stage.json           the stage cache's marker (tailor_jax.stage_cache; an older
                                         done.json still counts as done)
    run_dir/analyse/summary.json         student accuracy per level, failures, its traces' metrics
                                         (or the reason analyse was skipped: no student)
    run_dir/analyse/samples.jsonl        every student sample, verified
    run_dir/discover/candidates.json     library + compositions + accepted teacher proposals
    run_dir/discover/rejected.json       dropped teacher proposals with the reason
    run_dir/synthesize/demos.jsonl       one demonstration per (question, candidate)
    run_dir/curate/sft.jsonl             the SFT set: task records + "completion" + "primitive"
    run_dir/curate/report.{json,md}      primitive mix, per-primitive quality, diversity metrics
    run_dir/baselines/<name>.jsonl       baseline sets of the same size, and baselines/report.*
    run_dir/tfds/                        the same SFT sets as a TFDS/ArrayRecord data_dir: config
                                         `tailor` (curate) and one per baseline, split `train`

Without a student (from-scratch runs) analyse is skipped with a recorded reason, discover
gets no failure traces, and curation uses the model-free metrics only (TF-IDF embeddings, no
log-likelihood fit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from collections import Counter, defaultdict
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tailor_jax.atomic import write_json
from tailor_jax.config import config_hash, config_to_dict, dump_config, require
from tailor_jax.data.jsonl import read_jsonl, write_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.eval.evaluator import score_completions
from tailor_jax.primitives import metrics as metrics_lib
from tailor_jax.primitives import selection
from tailor_jax.primitives.metrics import Example
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
    fit_weight: float = 0.0  # ... of the set's mean z-scored student log-likelihood (needs a student)
    max_length_words: int | None = None  # drop longer demonstrations

    def __post_init__(self):
        require(0.0 <= self.min_accuracy <= 1.0, f"curate.min_accuracy must be in [0, 1], got {self.min_accuracy}")
        require(self.max_per_question >= 1, f"curate.max_per_question must be >= 1, got {self.max_per_question}")
        require(0.0 < self.dedup_threshold <= 1.0, f"curate.dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        weights = (self.distinct_weight, self.coverage_weight, self.diversity_weight, self.primitive_weight, self.fit_weight)
        require(min(weights) >= 0, "curate weights must be >= 0")


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
def _say(message: str) -> None:
    print(f"tailor-jax tailor: {message}", file=sys.stderr, flush=True)


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data, ensure_ascii=False, default=str)


def _read_json(path: Path, stage: str) -> Any:
    if not path.is_file():
        raise TailorError(f"{path} is missing; run the {stage} stage first (tailor-jax tailor CONFIG --stage {stage})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TailorError(f"{path} is not valid JSON ({err.msg}); rerun the {stage} stage") from None


def _stage_dir(cfg: TailorConfig, stage: str) -> Path:
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
    settings["curate"] = {**settings["synthesize"], "budget": cfg.budget, "curate": config_to_dict(cfg.curate)}
    return settings[stage]


def _mark_done(cfg: TailorConfig, stage: str) -> None:
    write_stage(_stage_dir(cfg, stage), {"hash": config_hash(stage_settings(cfg, stage)), "status": "done"})


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


# --- stage 1: analyse ---------------------------------------------------------------------------
def analyse(cfg: TailorConfig) -> AnalyseResult:
    """Sample the student k times on the first questions, verify, and summarise."""
    out = _stage_dir(cfg, "analyse")
    task = make_task(cfg)
    if cfg.student is None:
        result = AnalyseResult(skipped="no student model given (from-scratch run: the student does not exist before SFT)")
        _write_json(out / "summary.json", dataclasses.asdict(result))
        _mark_done(cfg, "analyse")
        return result
    from tailor_jax.primitives.teacher import LocalModel

    questions = load_questions(cfg, task)[: cfg.analyse.num_questions]
    student = LocalModel.load(cfg.student)
    acfg = cfg.analyse
    prompts = [task.prompt(r, style=cfg.prompt_style) for r in questions]
    done = student.complete(prompts, max_new_tokens=acfg.max_new_tokens, temperature=acfg.temperature,
                            num_samples=acfg.samples_per_question, seed=cfg.seed)
    scores = score_completions(task, questions, done)  # [question, sample] binary rewards
    texts = done.texts
    samples, by_level, failures = [], defaultdict(list), []
    examples = []
    for i, record in enumerate(questions):
        for s in range(acfg.samples_per_question):
            j = i * acfg.samples_per_question + s
            completion = texts[j]
            correct = bool(scores[i, s] == 1.0)
            samples.append({"id": record.get("id"), "sample": s, "completion": completion,
                            "finished": done.finished[j], "correct": correct})
            by_level[str(task.difficulty(record))].append(correct)
            examples.append(Example(record, completion, None))
            if not correct and len(failures) < acfg.max_failures:
                failures.append({"id": record.get("id"), "question": task.question(record), "completion": completion})
    write_jsonl(out / "samples.jsonl", samples)
    scorer = metrics_lib.ModelScorer(student.model, student.tokenizer)
    result = AnalyseResult(
        skipped=None,
        accuracy=float(np.mean([s["correct"] for s in samples])),
        accuracy_by_level={k: float(np.mean(v)) for k, v in sorted(by_level.items(), key=lambda kv: int(kv[0]))},
        failures=failures,
        metrics=metrics_lib.compute_metrics(examples, task, scorer=scorer, prompt_style=cfg.prompt_style),
    )
    _write_json(out / "summary.json", dataclasses.asdict(result))
    _mark_done(cfg, "analyse")
    _say(f"analyse: student accuracy {result.accuracy:.3f} over {len(samples)} samples")
    return result


def load_analysis(cfg: TailorConfig) -> AnalyseResult:
    return AnalyseResult(**_read_json(Path(cfg.run_dir) / "analyse" / "summary.json", "analyse"))


# --- stage 2: discover -------------------------------------------------------------------------
def discover(cfg: TailorConfig, analysis: AnalyseResult) -> DiscoverResult:
    """The candidate pool: library primitives, compositions, teacher proposals."""
    from tailor_jax.primitives import all_primitives
    from tailor_jax.primitives import teacher as teacher_lib

    out = _stage_dir(cfg, "discover")
    known = all_primitives(cfg.task)
    candidates = [Candidate(p.name, p.source, p.description, tuple(sorted(p.tags))) for p in known.values()]
    rejected: list[dict] = []
    raw: list[dict] = []
    if cfg.teacher.path is not None:
        tcfg = cfg.teacher
        teacher = teacher_lib.LocalModel.load(tcfg.path)
        proposals: list[str] = []
        seen = [c.description for c in candidates]
        for z in tcfg.extra_proposals:
            accepted, dropped = teacher_lib.parse_proposals(f"Strategy: {z}", seen + proposals)
            proposals += accepted
            rejected += [{**d, "origin": "extra_proposals"} for d in dropped]
        if tcfg.num_generations:
            library = [p for p in known.values() if p.source == "library"]
            text = teacher_lib.proposal_prompt(cfg.task, library, analysis.failures[: tcfg.failures_in_prompt],
                                               tcfg.proposals_per_generation)
            prompt = teacher_lib.render_prompt(text, style=cfg.prompt_style)
            texts, finished = teacher.sample([prompt], max_new_tokens=tcfg.proposal_max_new_tokens,
                                             temperature=tcfg.temperature, num_samples=tcfg.num_generations, seed=cfg.seed)
            for generation, done in zip(texts, finished):
                accepted, dropped = teacher_lib.parse_proposals(generation, seen + proposals)
                raw.append({"generation": generation, "finished": done, "accepted": accepted})
                proposals += accepted
                rejected += [{**d, "origin": "teacher"} for d in dropped]
            (out / "proposal_prompt.txt").write_text(text)
        for i, z in enumerate(proposals, 1):
            candidates.append(Candidate(f"teacher_{i}", "teacher", z, ()))
        for item in rejected:
            log.info("discover: dropped proposal %r: %s", item["text"][:80], item["reason"])
    write_jsonl(out / "teacher_raw.jsonl", raw)
    _write_json(out / "candidates.json", [dataclasses.asdict(c) for c in candidates])
    _write_json(out / "rejected.json", rejected)
    _mark_done(cfg, "discover")
    teachers = sum(c.source == "teacher" for c in candidates)
    _say(f"discover: {len(candidates)} candidates ({teachers} from the teacher), {len(rejected)} proposals dropped")
    return DiscoverResult(candidates, rejected)


def load_discovery(cfg: TailorConfig) -> DiscoverResult:
    out = Path(cfg.run_dir) / "discover"
    candidates = [Candidate(**{**c, "tags": tuple(c["tags"])}) for c in _read_json(out / "candidates.json", "discover")]
    return DiscoverResult(candidates, _read_json(out / "rejected.json", "discover"))


# --- stage 3: synthesize -------------------------------------------------------------------------
def synthesize(cfg: TailorConfig, discovery: DiscoverResult) -> SynthesizeResult:
    """A demonstration per (question, candidate): rendered for programmatic primitives,
    generated by the teacher conditioned on z for teacher primitives."""
    from tailor_jax.primitives import all_primitives
    from tailor_jax.primitives import teacher as teacher_lib

    out = _stage_dir(cfg, "synthesize")
    task = make_task(cfg)
    questions = load_questions(cfg, task)
    programmatic = all_primitives(cfg.task)
    demos: list[Demo] = []
    teacher_candidates = []
    for candidate in discovery.candidates:
        if candidate.source == "teacher":
            teacher_candidates.append(candidate)
            continue
        if candidate.name not in programmatic:
            raise TailorError(f"candidate {candidate.name!r} is not a {cfg.task} primitive; rerun the discover stage")
        primitive = programmatic[candidate.name]
        for record in questions:
            completion = task.target(record, primitive.render(record))
            demos.append(Demo(record, candidate.name, candidate.source, completion, candidate.description))
    if teacher_candidates:
        tcfg = cfg.teacher
        if tcfg.path is None:
            raise TailorError("the candidates include teacher primitives but teacher.path is not set; rerun discover")
        teacher = teacher_lib.LocalModel.load(tcfg.path)
        chosen = questions[: tcfg.questions_per_primitive]
        for n, candidate in enumerate(teacher_candidates):
            prompts = [teacher_lib.conditioned_prompt(candidate.description, task.question(r), cfg.prompt_style) for r in chosen]
            done = teacher.complete(prompts, max_new_tokens=tcfg.max_new_tokens, temperature=tcfg.temperature,
                                    seed=cfg.seed + 1000 * (n + 1))
            for record, text in zip(chosen, done.texts):
                completion = teacher_lib.strip_instruction(text, candidate.description)
                demos.append(Demo(record, candidate.name, "teacher", completion, candidate.description))
    write_jsonl(out / "demos.jsonl", [vars(d) for d in demos])  # shallow: asdict deep-copies every record
    _mark_done(cfg, "synthesize")
    _say(f"synthesize: {len(demos)} demonstrations from {len(discovery.candidates)} candidates")
    return SynthesizeResult(demos)


def load_synthesis(cfg: TailorConfig) -> SynthesizeResult:
    path = Path(cfg.run_dir) / "synthesize" / "demos.jsonl"
    if not path.is_file():
        raise TailorError(f"{path} is missing; run the synthesize stage first (tailor-jax tailor CONFIG --stage synthesize)")
    return SynthesizeResult([Demo(**d) for d in read_jsonl(path)])


# --- stage 4: curate ---------------------------------------------------------------------------
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


def question_states(task_name: str, records: list[dict]) -> dict[str, frozenset]:
    """The reasoning states every primitive and composition reaches on each question (what the
    coverage metric counts as reachable), by question key."""
    out: dict[str, frozenset] = {}
    for record in records:
        key = metrics_lib.question_key(record)
        if key not in out:
            out[key] = frozenset(metrics_lib.reachable_states(task_name, [record]) or ())
    return out


def curate(cfg: TailorConfig, synthesis: SynthesizeResult) -> CurateResult:
    """Verify, score quality and diversity, select a coverage-maximising mix, strip z."""
    from tailor_jax.primitives import all_primitives

    out = _stage_dir(cfg, "curate")
    task = make_task(cfg)
    ccfg = cfg.curate
    programmatic = all_primitives(cfg.task)
    dropped: Counter = Counter()
    by_primitive: dict[str, list[bool]] = defaultdict(list)
    passing: list[Demo] = []
    for demo in synthesis.demos:
        ok = task.reward("binary", demo.record, demo.completion) == 1.0
        reason = None if ok else "final answer not verified"
        primitive = programmatic.get(demo.primitive) if demo.source != "teacher" else None
        if ok and primitive is not None and primitive.check(demo.record, metrics_lib.trace_of(demo.completion)):
            reason = "an intermediate step failed its check"
        if ok and reason is None and demo.z and demo.source == "teacher" and demo.z in demo.completion:
            reason = "the instruction z leaks into the completion"
        if reason is None and ccfg.max_length_words is not None and len(demo.completion.split()) > ccfg.max_length_words:
            reason = "longer than curate.max_length_words"
        by_primitive[demo.primitive].append(reason is None)
        if reason is None:
            passing.append(demo)
        else:
            dropped[reason] += 1
    quality = {name: {"verified_accuracy": float(np.mean(v)), "demos": len(v)} for name, v in by_primitive.items()}
    weak = {name for name, q in quality.items() if q["verified_accuracy"] < ccfg.min_accuracy}
    for name in sorted(weak):
        log.info("curate: dropped primitive %s (verified accuracy %.3f < %.3f)", name, quality[name]["verified_accuracy"], ccfg.min_accuracy)
    dropped["primitive below curate.min_accuracy"] += sum(d.primitive in weak for d in passing)
    pool = [d for d in passing if d.primitive not in weak]
    if not pool:
        raise TailorError("curate: no demonstration passed verification; check the synthesize artefacts")
    seen_texts: set = set()
    unique = []
    for d in pool:  # exact duplicates (same question, same completion) from different primitives
        key = (metrics_lib.question_key(d.record), d.completion)
        if key in seen_texts:
            dropped["exact duplicate of another primitive's demonstration"] += 1
            continue
        seen_texts.add(key)
        unique.append(d)
    pool = unique
    examples = [Example(d.record, d.completion, d.primitive) for d in pool]
    scorer = None
    bonus = None
    if cfg.student is not None:
        scorer = metrics_lib.ModelScorer.from_directory(cfg.student)
        embeddings, logps, _ = scorer.score(task, examples, cfg.prompt_style)
        fits = defaultdict(list)
        for d, lp in zip(pool, logps):
            fits[d.primitive].append(float(lp))
        for name, v in fits.items():
            quality[name]["student_logprob"] = float(np.mean(v))
        if ccfg.fit_weight > 0:
            bonus = ccfg.fit_weight * (logps - logps.mean()) / (logps.std() + 1e-9)
        embedding_kind = "model"
    else:
        embeddings = metrics_lib.tfidf_char_embeddings([d.completion for d in pool])
        embedding_kind = "tfidf_char3"
    for name, q in quality.items():
        lengths = [len(d.completion.split()) for d in pool if d.primitive == name]
        q["mean_length_words"] = float(np.mean(lengths)) if lengths else None
    reachable = question_states(cfg.task, [d.record for d in pool])
    items = [selection.describe(d.record, d.completion, d.primitive, task.difficulty(d.record),
                                reachable[metrics_lib.question_key(d.record)]) for d in pool]
    weights = selection.Weights(ccfg.distinct_weight, ccfg.coverage_weight, ccfg.diversity_weight, ccfg.primitive_weight)
    chosen, duplicates = selection.select_diverse(
        items, embeddings, cfg.budget, weights=weights, bonus=bonus,
        max_per_group=ccfg.max_per_question, dedup_threshold=ccfg.dedup_threshold,
    )
    dropped["near-duplicate (embedding)"] += duplicates
    selected = [examples[i] for i in chosen]
    if len(selected) < cfg.budget:
        log.warning("curate: only %d demonstrations for a budget of %d", len(selected), cfg.budget)
        _say(f"curate: warning: only {len(selected)} demonstrations for a budget of {cfg.budget} (raise num_questions)")
    write_sft_set(cfg, "tailor", selected, out / "sft.jsonl")
    selected_questions = {metrics_lib.question_key(ex.record) for ex in selected}
    set_metrics = metrics_lib.compute_metrics(selected, task, scorer=scorer, prompt_style=cfg.prompt_style,
                                              reachable=set().union(*(reachable[q] for q in selected_questions)))
    analysis_path = Path(cfg.run_dir) / "analyse" / "summary.json"
    skipped = json.loads(analysis_path.read_text()).get("skipped") if analysis_path.is_file() else "analyse not run"
    report = {
        "task": cfg.task,
        "budget": cfg.budget,
        "selected": len(selected),
        "candidates": len(synthesis.demos),
        "embedding": embedding_kind,
        "model_free_only": scorer is None,
        "analyse_skipped": skipped,
        "dropped": dict(dropped),
        "primitive_quality": quality,
        "primitive_mix": set_metrics["primitive_mix"],
        "metrics": set_metrics,
    }
    _write_json(out / "report.json", report)
    (out / "report.md").write_text(curate_markdown(report))
    _mark_done(cfg, "curate")
    _say(f"curate: {len(selected)} demonstrations from {len(set_metrics['primitive_mix'])} primitives -> {out / 'sft.jsonl'} "
         f"and TFDS config 'tailor' in {sft_data_dir(cfg)}")
    return CurateResult(selected, report)


def curate_markdown(report: dict) -> str:
    lines = [f"# Tailor SFT set ({report['task']})", ""]
    lines.append(f"{report['selected']} demonstrations (budget {report['budget']}) from {report['candidates']} candidates; "
                 f"embedding: {report['embedding']}.")
    if report["model_free_only"]:
        lines.append("No student model: curation used the model-free metrics only (TF-IDF embeddings, no fit score).")
    if report["analyse_skipped"]:
        lines.append(f"Analyse skipped: {report['analyse_skipped']}.")
    lines += ["", "## Primitive mix", "", "| primitive | selected | verified accuracy | mean length (words) |", "|---|---|---|---|"]
    for name, q in report["primitive_quality"].items():
        length = q.get("mean_length_words")
        lines.append(f"| {name} | {report['primitive_mix'].get(name, 0)} | {q['verified_accuracy']:.3f} | "
                     f"{'n/a' if length is None else f'{length:.1f}'} |")
    lines += ["", "## Metrics", "", metrics_lib.format_metrics_table({"tailor": report["metrics"]})]
    if report["dropped"]:
        lines += ["## Dropped", ""] + [f"- {reason}: {count}" for reason, count in report["dropped"].items()]
    return "\n".join(lines) + "\n"


# --- the whole pipeline, baselines -------------------------------------------------------------
def run_stage(cfg: TailorConfig, stage: str):
    """Run one stage from its predecessor's artefacts."""
    if stage == "analyse":
        return analyse(cfg)
    if stage == "discover":
        return discover(cfg, load_analysis(cfg))
    if stage == "synthesize":
        return synthesize(cfg, load_discovery(cfg))
    if stage == "curate":
        return curate(cfg, load_synthesis(cfg))
    raise TailorError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")


def run_pipeline(cfg: TailorConfig) -> CurateResult:
    """All four stages; a stage already done with the same settings is loaded, not rerun."""
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    dump_config(cfg, Path(cfg.run_dir) / "tailor_config.yaml")
    result = None
    for stage in STAGES:
        if is_done(cfg, stage):
            _say(f"{stage}: done already (same settings); using its artefacts")
            continue
        result = run_stage(cfg, stage)
    if result is None:
        report = _read_json(Path(cfg.run_dir) / "curate" / "report.json", "curate")
        result = CurateResult(metrics_lib.read_examples(Path(cfg.run_dir) / "curate" / "sft.jsonl"), report)
    return result


def run_baselines(cfg: TailorConfig) -> dict[str, dict]:
    """Build each configured baseline with the Tailor budget; metrics of each (and of the Tailor
    set when it exists) in baselines/report.{json,md}."""
    from tailor_jax.primitives import baselines as baselines_lib

    task = make_task(cfg)
    questions = load_questions(cfg, task)
    out = Path(cfg.run_dir) / "baselines"
    out.mkdir(parents=True, exist_ok=True)
    bcfg = cfg.baselines
    scorer = metrics_lib.ModelScorer.from_directory(cfg.student) if cfg.student else None
    results: dict[str, dict] = {}
    tailor_set = Path(cfg.run_dir) / "curate" / "sft.jsonl"
    if tailor_set.is_file():
        results["tailor"] = metrics_lib.compute_metrics(metrics_lib.read_examples(tailor_set), task, scorer=scorer, prompt_style=cfg.prompt_style)
    for name in bcfg.names:
        options = {}
        if name == "redistill":
            options = dict(policy_dir=bcfg.policy, samples_per_question=bcfg.samples_per_question,
                           max_new_tokens=bcfg.max_new_tokens, temperature=bcfg.temperature,
                           prompt_style=cfg.prompt_style, seed=cfg.seed)
        examples = baselines_lib.build_baseline(name, task, questions, cfg.budget, **options)
        write_sft_set(cfg, name, examples, out / f"{name}.jsonl")
        if examples:
            results[name] = metrics_lib.compute_metrics(examples, task, scorer=scorer, prompt_style=cfg.prompt_style)
        _say(f"baseline {name}: {len(examples)} demonstrations -> {out / (name + '.jsonl')}")
    _write_json(out / "report.json", results)
    (out / "report.md").write_text(comparison_markdown(results))
    return results


def comparison_markdown(results: dict[str, dict]) -> str:
    if not results:
        return "No sets to compare.\n"
    text = "# SFT sets compared\n\n" + metrics_lib.format_metrics_table(results)
    if "tailor" in results:
        wins = []
        for metric in metrics_lib.DIVERSITY_METRICS:
            others = [r.get(metric) for name, r in results.items() if name != "tailor"]
            mine = results["tailor"].get(metric)
            if mine is not None and all(o is not None and mine > o for o in others):
                wins.append(metric)
        text += f"\nTailor is strictly higher than every baseline on: {', '.join(wins) or 'none'} " \
                f"(of {', '.join(metrics_lib.DIVERSITY_METRICS)}).\n"
    return text


def warm_start(
    task: str,
    records: list[dict],
    *,
    method: str = "tailor",
    task_options: dict | None = None,
    run_dir: str | None = None,
    budget: int | None = None,
    **options: Any,
) -> list[dict]:
    """SFT lines (records + "completion" + "primitive") for `tailor-jax run`'s warm start.

    `tailor` runs the pipeline on `records` as the question pool (artefacts in `run_dir`, a
    temporary directory when not given; `options` are further TailorConfig keys such as
    `curate` or `student`); `rule_based` / `four_star` build those baselines. `budget`
    defaults to one demonstration per record.
    """
    import tempfile

    from tailor_jax.config import config_from_dict
    from tailor_jax.primitives import baselines as baselines_lib

    budget = len(records) if budget is None else int(budget)
    if method in ("rule_based", "four_star"):
        examples = baselines_lib.build_baseline(method, get_task(task, **(task_options or {})), records, budget)
        return [metrics_lib.example_to_json(ex) for ex in examples]
    if method != "tailor":
        raise TailorError(f"unknown warm-start method {method!r}; use tailor, rule_based or four_star")
    with tempfile.TemporaryDirectory(prefix="tailor-") as scratch:
        cfg = config_from_dict(TailorConfig, {
            **options, "run_dir": run_dir or scratch, "task": task, "task_options": dict(task_options or {}),
            "num_questions": len(records), "budget": budget,
        })
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        write_jsonl(Path(cfg.run_dir) / "questions.jsonl", records)
        result = run_pipeline(cfg)
        return [metrics_lib.example_to_json(ex) for ex in result.examples]
