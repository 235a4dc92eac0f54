"""The Tailor pipeline: analyse -> discover -> synthesize -> curate, each a function with typed
inputs and outputs whose artefacts go to `<run_dir>/<stage>/`, so any stage can be rerun alone
from its predecessor's artefacts, and `run_pipeline` skips stages already done with the same
settings.

    run_dir/questions.jsonl              the question pool (generated or copied from train_file)
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
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tailor_jax.config import dump_config
from tailor_jax.data.jsonl import read_jsonl, write_jsonl
from tailor_jax.errors import TailorError
from tailor_jax.eval.evaluator import score_completions
from tailor_jax.tailor import metrics as metrics_lib
from tailor_jax.tailor.curate import curate, curate_markdown, question_states
from tailor_jax.tailor.metrics import Example
from tailor_jax.tailor.stages import (  # the configs and stage helpers, re-exported for callers of the pipeline
    STAGES, AnalyseConfig, AnalyseResult, BaselinesConfig, Candidate, CurateConfig, CurateResult, Demo, DiscoverResult,
    SynthesizeResult, TailorConfig, TeacherConfig, is_done, load_questions, make_task, mark_done, read_json, say,
    sft_data_dir, stage_dir, stage_settings, write_json, write_sft_set,
)
from tailor_jax.tasks import get_task

__all__ = [
    "STAGES", "AnalyseConfig", "AnalyseResult", "BaselinesConfig", "Candidate", "CurateConfig", "CurateResult", "Demo",
    "DiscoverResult", "SynthesizeResult", "TailorConfig", "TeacherConfig", "analyse", "comparison_markdown", "curate",
    "curate_markdown", "discover", "is_done", "load_analysis", "load_discovery", "load_questions", "load_synthesis",
    "make_task", "question_states", "run_baselines", "run_pipeline", "run_stage", "sft_data_dir", "stage_settings",
    "synthesize", "warm_start",
]

log = logging.getLogger(__name__)

# --- stage 1: analyse ---------------------------------------------------------------------------
def analyse(cfg: TailorConfig) -> AnalyseResult:
    """Sample the student k times on the first questions, verify, and summarise."""
    out = stage_dir(cfg, "analyse")
    task = make_task(cfg)
    if cfg.student is None:
        result = AnalyseResult(skipped="no student model given (from-scratch run: the student does not exist before SFT)")
        write_json(out / "summary.json", dataclasses.asdict(result))
        mark_done(cfg, "analyse")
        return result
    from tailor_jax.tailor.teacher import LocalModel

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
    write_json(out / "summary.json", dataclasses.asdict(result))
    mark_done(cfg, "analyse")
    say(f"analyse: student accuracy {result.accuracy:.3f} over {len(samples)} samples")
    return result


def load_analysis(cfg: TailorConfig) -> AnalyseResult:
    return AnalyseResult(**read_json(Path(cfg.run_dir) / "analyse" / "summary.json", "analyse"))


# --- stage 2: discover -------------------------------------------------------------------------
def discover(cfg: TailorConfig, analysis: AnalyseResult) -> DiscoverResult:
    """The candidate pool: library primitives, compositions, teacher proposals."""
    from tailor_jax.primitives import all_primitives
    from tailor_jax.tailor import teacher as teacher_lib

    out = stage_dir(cfg, "discover")
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
    write_json(out / "candidates.json", [dataclasses.asdict(c) for c in candidates])
    write_json(out / "rejected.json", rejected)
    mark_done(cfg, "discover")
    teachers = sum(c.source == "teacher" for c in candidates)
    say(f"discover: {len(candidates)} candidates ({teachers} from the teacher), {len(rejected)} proposals dropped")
    return DiscoverResult(candidates, rejected)


def load_discovery(cfg: TailorConfig) -> DiscoverResult:
    out = Path(cfg.run_dir) / "discover"
    candidates = [Candidate(**{**c, "tags": tuple(c["tags"])}) for c in read_json(out / "candidates.json", "discover")]
    return DiscoverResult(candidates, read_json(out / "rejected.json", "discover"))


# --- stage 3: synthesize -------------------------------------------------------------------------
def synthesize(cfg: TailorConfig, discovery: DiscoverResult) -> SynthesizeResult:
    """A demonstration per (question, candidate): rendered for programmatic primitives,
    generated by the teacher conditioned on z for teacher primitives."""
    from tailor_jax.primitives import all_primitives
    from tailor_jax.tailor import teacher as teacher_lib

    out = stage_dir(cfg, "synthesize")
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
    mark_done(cfg, "synthesize")
    say(f"synthesize: {len(demos)} demonstrations from {len(discovery.candidates)} candidates")
    return SynthesizeResult(demos)


def load_synthesis(cfg: TailorConfig) -> SynthesizeResult:
    path = Path(cfg.run_dir) / "synthesize" / "demos.jsonl"
    if not path.is_file():
        raise TailorError(f"{path} is missing; run the synthesize stage first (tailor-jax tailor CONFIG --stage synthesize)")
    return SynthesizeResult([Demo(**d) for d in read_jsonl(path)])


# --- stage 4: curate ---------------------------------------------------------------------------
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
            say(f"{stage}: done already (same settings); using its artefacts")
            continue
        result = run_stage(cfg, stage)
    if result is None:
        report = read_json(Path(cfg.run_dir) / "curate" / "report.json", "curate")
        result = CurateResult(metrics_lib.read_examples(Path(cfg.run_dir) / "curate" / "sft.jsonl"), report)
    return result


def run_baselines(cfg: TailorConfig) -> dict[str, dict]:
    """Build each configured baseline with the Tailor budget; metrics of each (and of the Tailor
    set when it exists) in baselines/report.{json,md}."""
    from tailor_jax.tailor import baselines as baselines_lib

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
        say(f"baseline {name}: {len(examples)} demonstrations -> {out / (name + '.jsonl')}")
    write_json(out / "report.json", results)
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
    from tailor_jax.tailor import baselines as baselines_lib

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
