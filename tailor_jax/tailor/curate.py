"""Stage 4 of the Tailor pipeline, curate: verify every demonstration (final answer and, for
programmatic primitives, every step), drop duplicates, and select the budget's worth by the
diversity objective (`selection.select_diverse`); writes `curate/sft.jsonl` and its report."""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from tailor_jax.errors import TailorError
from tailor_jax.tailor import metrics as metrics_lib
from tailor_jax.tailor import selection
from tailor_jax.tailor.metrics import Example
from tailor_jax.tailor.stages import (
    CurateResult, Demo, SynthesizeResult, TailorConfig, make_task, mark_done, say, sft_data_dir, stage_dir, write_json,
    write_sft_set,
)
from tailor_jax.tasks import problem_key

log = logging.getLogger(__name__)

def question_states(task_name: str, records: list[dict]) -> dict[str, frozenset]:
    """The reasoning states every primitive and composition reaches on each question (what the
    coverage metric counts as reachable), by question key."""
    out: dict[str, frozenset] = {}
    for record in records:
        key = problem_key(record)
        if key not in out:
            out[key] = frozenset(metrics_lib.reachable_states(task_name, [record]) or ())
    return out


def curate(cfg: TailorConfig, synthesis: SynthesizeResult) -> CurateResult:
    """Verify, score quality and diversity, select a coverage-maximising mix, strip z."""
    from tailor_jax.primitives import all_primitives

    out = stage_dir(cfg, "curate")
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
        key = (problem_key(d.record), d.completion)
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
                                reachable[problem_key(d.record)]) for d in pool]
    weights = selection.Weights(ccfg.distinct_weight, ccfg.coverage_weight, ccfg.diversity_weight, ccfg.primitive_weight,
                                ccfg.primitive_term)
    chosen, duplicates = selection.select_diverse(
        items, embeddings, cfg.budget, weights=weights, bonus=bonus,
        max_per_group=ccfg.max_per_question, dedup_threshold=ccfg.dedup_threshold,
    )
    dropped["near-duplicate (embedding)"] += duplicates
    selected = [examples[i] for i in chosen]
    if len(selected) < cfg.budget:
        log.warning("curate: only %d demonstrations for a budget of %d", len(selected), cfg.budget)
        say(f"curate: warning: only {len(selected)} demonstrations for a budget of {cfg.budget} (raise num_questions)")
    write_sft_set(cfg, "tailor", selected, out / "sft.jsonl")
    selected_questions = {problem_key(ex.record) for ex in selected}
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
    write_json(out / "report.json", report)
    (out / "report.md").write_text(curate_markdown(report))
    mark_done(cfg, "curate")
    say(f"curate: {len(selected)} demonstrations from {len(set_metrics['primitive_mix'])} primitives -> {out / 'sft.jsonl'} "
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
