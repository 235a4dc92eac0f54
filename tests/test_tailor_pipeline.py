"""The Tailor pipeline: model-free run vs the baselines, stages alone and resumed, the
student/teacher path with a tiny random local checkpoint, proposal parsing, redistill, CLI."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from itertools import islice
from pathlib import Path

import jax
import numpy as np
import pytest

from tailor_jax.cli import main as cli_main
from tailor_jax.data import pipeline as data_pipeline
from tailor_jax.data import tokenizer as tok_lib
from tailor_jax.errors import TailorError
from tailor_jax.eval.evaluator import Completions
from tailor_jax.model import create_model, get_preset, save_pretrained
from tailor_jax.primitives import all_primitives, compositions
from tailor_jax.tailor import baselines, selection, teacher
from tailor_jax.tailor import metrics as M
from tailor_jax.tailor import pipeline as P
from tailor_jax.tasks import get_task
from tailor_jax.train import sft as sft_lib

GF_OPTIONS = {"p": 11, "steps": "2-4"}
# Small model-free runs (a few seconds each) on which Tailor must beat both baselines on every
# diversity metric; docs/tailor.md has the larger runs.
SMALL_RUNS = {
    "gf": {"task_options": GF_OPTIONS, "num_questions": 120, "budget": 60},
    "kk": {"task_options": {"people": "3-4"}, "num_questions": 40, "budget": 20},
}


def model_free_config(run_dir: Path, **changes) -> P.TailorConfig:
    settings = {"task": "gf", "task_options": GF_OPTIONS, "num_questions": 80, "budget": 40, **changes}
    return P.TailorConfig(run_dir=str(run_dir), **settings)


@pytest.fixture(scope="module", params=sorted(SMALL_RUNS))
def model_free_run(request, tmp_path_factory):
    cfg = model_free_config(tmp_path_factory.mktemp(f"tailor_{request.param}"), task=request.param, **SMALL_RUNS[request.param])
    result = P.run_pipeline(cfg)
    return cfg, result, P.run_baselines(cfg)


def test_tailor_beats_the_baselines_on_every_diversity_metric(model_free_run):
    cfg, result, compared = model_free_run
    assert set(compared) == {"tailor", "rule_based", "four_star"}
    for name, m in compared.items():
        assert m["size"] == cfg.budget and m["verified_accuracy"] == 1.0, name
    for metric in M.DIVERSITY_METRICS:
        mine = compared["tailor"][metric]
        assert mine > compared["rule_based"][metric] and mine > compared["four_star"][metric], metric
    assert compared["tailor"]["step_check_rate"] == 1.0
    assert compared["tailor"]["num_primitives"] == len(all_primitives(cfg.task))  # every primitive represented
    report_md = (Path(cfg.run_dir) / "baselines" / "report.md").read_text()
    assert f"strictly higher than every baseline on: {', '.join(M.DIVERSITY_METRICS)} " in report_md


def test_selection_keeps_the_pools_difficulty_mix(model_free_run):
    cfg, result, _ = model_free_run
    task = P.make_task(cfg)
    pool = Counter(task.difficulty(r) for r in P.load_questions(cfg, task))
    assert Counter(task.difficulty(ex.record) for ex in result.examples) == selection.apportion(pool, cfg.budget)


def test_artefacts_and_the_sft_format(model_free_run):
    cfg, result, _ = model_free_run
    run = Path(cfg.run_dir)
    summary = json.loads((run / "analyse" / "summary.json").read_text())
    assert summary["skipped"].startswith("no student model")
    report = json.loads((run / "curate" / "report.json").read_text())
    assert report["model_free_only"] and report["embedding"] == "tfidf_char3"
    assert report["analyse_skipped"] == summary["skipped"]
    assert sum(report["primitive_mix"].values()) == cfg.budget == len(result.examples)
    assert "## Primitive mix" in (run / "curate" / "report.md").read_text()
    lines = [json.loads(line) for line in (run / "curate" / "sft.jsonl").read_text().splitlines()]
    ids = [line["id"] for line in lines]
    assert len(set(ids)) == len(ids)  # max_per_question = 1
    task = P.make_task(cfg)
    for line in lines:  # what `tailor-jax sft` trains on: the curated completion, z-free prompt
        prompt, completion = data_pipeline.record_to_text(task, line, "plain", False)
        assert completion == line["completion"] and task.reward("binary", line, completion) == 1.0
        assert prompt.text == f"User: {task.question(line)}\nAssistant: "
    demos = [json.loads(line) for line in (run / "synthesize" / "demos.jsonl").read_text().splitlines()]
    assert len(demos) == cfg.num_questions * len(json.loads((run / "discover" / "candidates.json").read_text()))


def test_sft_sets_are_written_as_tfds_datasets_the_sft_trainer_reads(model_free_run):
    cfg, _, _ = model_free_run
    run = Path(cfg.run_dir)
    task = P.make_task(cfg)
    jsonl = {"tailor": run / "curate" / "sft.jsonl", "rule_based": run / "baselines" / "rule_based.jsonl",
             "four_star": run / "baselines" / "four_star.jsonl"}
    for name, path in jsonl.items():
        data = sft_lib.DataConfig(task=cfg.task, tfds_dir=str(P.sft_data_dir(cfg)), tfds_config=name, eval_split=None)
        records = list(sft_lib.load_records(data, "train"))
        assert records == [json.loads(line) for line in path.read_text().splitlines()], name
        assert len(records) == cfg.budget and sft_lib.load_records(data, "eval") == []
        for record in records:
            assert data_pipeline.record_to_text(task, record, "plain", False)[1] == record["completion"]
            assert isinstance(record["primitive"], str)


def test_kk_compositions_append_a_checked_final_pass():
    composed = compositions("kk")
    assert sorted(composed) == ["error_recovery+final_check", "forced_role_propagation+final_check",
                                "statement_analysis+final_check"]
    task = get_task("kk", people="2-6")
    for record in task.generate(30, 4):
        for primitive in composed.values():
            trace = primitive.render(record)
            assert primitive.check(record, trace) == [] and task.reward("binary", record, task.target(record, trace)) == 1.0
            flip = {"true": "false", "false": "true"}
            flipped = re.sub(r"is (true|false)\. OK\.", lambda m: f"is {flip[m[1]]}. OK.", trace, count=1)
            assert flipped != trace
            assert primitive.check(record, flipped), primitive.name  # a wrong verification claim is caught
            assert primitive.check(record, trace.rsplit("\n", 1)[0])  # the closing line is missing


def test_stages_run_alone_and_resume(tmp_path, capsys):
    cfg = model_free_config(tmp_path / "run", num_questions=30, budget=10)
    with pytest.raises(TailorError, match="run the synthesize stage first"):
        P.run_stage(cfg, "curate")
    for stage in P.STAGES:
        P.run_stage(cfg, stage)
        assert P.is_done(cfg, stage)
    sft = Path(cfg.run_dir) / "curate" / "sft.jsonl"
    first = sft.read_text()
    demos_mtime = (Path(cfg.run_dir) / "synthesize" / "demos.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    P.run_pipeline(cfg)  # everything done: nothing reruns
    err = capsys.readouterr().err
    assert err.count("done already") == 4 and sft.read_text() == first
    smaller = model_free_config(tmp_path / "run", num_questions=30, budget=6)
    P.run_pipeline(smaller)  # only curate depends on the budget
    assert (Path(cfg.run_dir) / "synthesize" / "demos.jsonl").stat().st_mtime_ns == demos_mtime
    assert len(sft.read_text().splitlines()) == 6
    assert not P.is_done(cfg, "curate") and P.is_done(smaller, "curate")


def test_parse_proposals_keeps_good_lines_and_says_why_others_go():
    text = (
        "Here are ideas:\n"
        "1. Strategy: Split the chain in three parts and solve each part separately before combining.\n"
        "- strategy: too short\n"
        "Strategy: split the chain in three parts and solve each part separately before combining\n"
        "Strategy: %%%% $$$$ #### 1234 5678 9999 ----\n"
        "Strategy: Write <think> inside the answer for every single step here\n"
        "Strategy: Work backwards from the given value, one operation at a time, undoing each.\n"
    )
    accepted, rejected = teacher.parse_proposals(text, ["Work backwards from the given value, one operation at a time, undoing each."])
    assert accepted == ["Split the chain in three parts and solve each part separately before combining."]
    reasons = [r["reason"] for r in rejected]
    assert reasons[0].startswith("too short")
    assert reasons[1] == "duplicate of a known strategy"
    assert reasons[2] == "mostly not letters" and reasons[3] == "contains markup"
    assert reasons[4] == "duplicate of a known strategy"
    accepted, rejected = teacher.parse_proposals("ka mo ri\nzz")
    assert accepted == [] and rejected[0]["reason"] == "no line of the form 'Strategy: ...'"
    assert teacher.parse_proposals(None) == ([], [{"text": "", "reason": "no line of the form 'Strategy: ...'"}])


# --- the model path ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-shaped model + a BPE tokenizer trained on GF text, in HF format."""
    path = tmp_path_factory.mktemp("tiny")
    task = get_task("gf", **GF_OPTIONS)
    records = list(islice(task.generate(200, 0), 200))
    texts = [task.prompt(r).text + task.target(r) for r in records]
    tokenizer = tok_lib.train_bpe_tokenizer(texts, 320, sorted(set(records[0]["symbols"].values())))
    tok_lib.save_tokenizer(tokenizer, path)
    config = get_preset("tiny").replace(
        vocab_size=-(-len(tokenizer) // 8) * 8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
        num_kv_heads=1, head_dim=16, bos_token_id=tokenizer.bos_token_id, eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tok_lib.pad_id(tokenizer),
    )
    save_pretrained(create_model(config, seed=0), path)
    return path


def test_model_scorer_matches_a_direct_forward_pass(tiny_dir):
    scorer = M.ModelScorer.from_directory(tiny_dir, batch_size=4)
    task = get_task("gf", **GF_OPTIONS)
    record = next(iter(task.generate(1, 3)))
    example = M.Example(record, task.target(record), "forward")
    embeddings, logps, counts = scorer.score(task, [example, example])
    ids, prompt_len = scorer.encode(task, example)
    from flax import nnx

    model = nnx.merge(scorer.graphdef, scorer.state)
    tokens = jax.numpy.asarray([ids])
    hidden, _ = model(tokens, return_hidden=True)
    hidden = np.asarray(hidden[0], np.float64)
    logp = np.asarray(jax.nn.log_softmax(model.logits(jax.numpy.asarray(hidden[None], jax.numpy.float32))[0], -1))
    want_logp = np.mean([logp[t - 1, ids[t]] for t in range(prompt_len, len(ids))])
    assert counts.tolist() == [len(ids) - prompt_len] * 2
    np.testing.assert_allclose(embeddings[0], hidden[prompt_len:].mean(0), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(logps[0], want_logp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(embeddings[1], embeddings[0], atol=1e-5)


def test_student_and_teacher_path_end_to_end(tiny_dir, tmp_path):
    z = "Work backwards from the given value, one operation at a time, undoing each."
    cfg = P.TailorConfig(
        run_dir=str(tmp_path / "run"), task="gf", task_options=GF_OPTIONS, num_questions=8, budget=6,
        student=str(tiny_dir),
        analyse=P.AnalyseConfig(num_questions=3, samples_per_question=2, max_new_tokens=16),
        teacher=P.TeacherConfig(path=str(tiny_dir), num_generations=2, proposal_max_new_tokens=16,
                                extra_proposals=[z, "too short"], questions_per_primitive=2, max_new_tokens=16),
        curate=P.CurateConfig(fit_weight=0.5),
    )
    result = P.run_pipeline(cfg)
    run = Path(cfg.run_dir)
    summary = json.loads((run / "analyse" / "summary.json").read_text())
    assert summary["skipped"] is None and summary["metrics"]["embedding"] == "model"
    # the summary's accuracy is the stage's samples verified again here, overall and per level
    samples = [json.loads(line) for line in (run / "analyse" / "samples.jsonl").read_text().splitlines()]
    task = get_task("gf", **GF_OPTIONS)
    questions = P.load_questions(cfg, task)[:3]
    assert [(s["id"], s["sample"]) for s in samples] == [(q["id"], k) for q in questions for k in range(2)]
    verified = [task.reward("binary", q, s["completion"], finished=s["finished"]) == 1.0
                for q, s in zip([q for q in questions for _ in range(2)], samples)]
    assert [s["correct"] for s in samples] == verified
    assert summary["accuracy"] == pytest.approx(np.mean(verified))
    by_level = {}
    for q, ok in zip([q for q in questions for _ in range(2)], verified):
        by_level.setdefault(str(task.difficulty(q)), []).append(ok)
    assert summary["accuracy_by_level"] == pytest.approx({k: np.mean(v) for k, v in by_level.items()})
    assert len(summary["failures"]) == min(verified.count(False), cfg.analyse.max_failures)
    candidates = json.loads((run / "discover" / "candidates.json").read_text())
    teachers = [c for c in candidates if c["source"] == "teacher"]
    assert teachers[0]["description"] == z  # the random model's own proposals are junk
    rejected = json.loads((run / "discover" / "rejected.json").read_text())
    assert any(r["origin"] == "extra_proposals" and r["reason"].startswith("too short") for r in rejected)
    assert sum(r["origin"] == "teacher" for r in rejected) >= 2  # one reason per generation at least
    assert "Strategy:" in (run / "discover" / "proposal_prompt.txt").read_text()
    demos = [json.loads(line) for line in (run / "synthesize" / "demos.jsonl").read_text().splitlines()]
    teacher_demos = [d for d in demos if d["source"] == "teacher"]
    assert len(teacher_demos) == 2 * len(teachers) and all(z not in d["completion"] for d in teacher_demos)
    report = json.loads((run / "curate" / "report.json").read_text())
    assert report["embedding"] == "model" and not report["model_free_only"]
    assert report["primitive_quality"]["teacher_1"]["verified_accuracy"] == 0.0  # nonsense: dropped
    assert "student_logprob" in report["primitive_quality"]["forward"]
    assert all(ex.primitive != "teacher_1" for ex in result.examples) and len(result.examples) == 6
    assert report["metrics"]["verified_accuracy"] == 1.0 and "student_logprob" in report["metrics"]


def test_redistill_keeps_correct_samples_one_per_question_first(tiny_dir, monkeypatch):
    task = get_task("gf", **GF_OPTIONS)
    records = list(task.generate(6, 9))
    # The real model path, with the first sample of question 1 replaced by its target: the random
    # model (almost surely) solves nothing itself, and the one planted answer must come back.
    real_complete = teacher.LocalModel.complete
    drawn = []

    def complete_and_plant(self, prompts, **kwargs):
        done = real_complete(self, prompts, **kwargs)
        texts, finished = list(done.decoded), list(done.finished)
        assert len(texts) == len(prompts) * kwargs["num_samples"] == len(finished)
        texts[1 * kwargs["num_samples"]] = task.target(records[1])[len(prompts[1].prefill):]
        finished[1 * kwargs["num_samples"]] = True
        drawn.extend(zip(prompts, texts, finished))
        return dataclasses.replace(done, decoded=texts, finished=finished)

    monkeypatch.setattr(teacher.LocalModel, "complete", complete_and_plant)
    real = baselines.redistill(task, records, 3, tiny_dir, samples_per_question=2, max_new_tokens=8)
    verified = [(records[i // 2], prompt.prefill + text) for i, (prompt, text, done) in enumerate(drawn)
                if done and task.reward("binary", records[i // 2], prompt.prefill + text) == 1.0]
    assert (records[1], task.target(records[1])) in verified
    per_question = [[c for r, c in verified if r is record] for record in records]
    expected = [(record, correct[rank]) for rank in range(2) for record, correct in zip(records, per_question)
                if rank < len(correct)][:3]  # one per question first, only verified samples
    assert [(e.record, e.completion) for e in real] == expected
    monkeypatch.undo()

    class FakePolicy:  # solves questions 0, 2, 4 in both samples (distinct texts), fails the rest
        def complete(self, prompts, *, num_samples, **_):
            texts = []
            for prompt in prompts:
                record = next(r for r in records if task.question(r) in prompt.text)
                index = records.index(record)
                for s in range(num_samples):
                    texts.append(task.target(record) + " " * s if index % 2 == 0 else "<think>?</think>")
            return Completions([p.prefill for p in prompts], texts, [True] * len(texts), [1] * len(texts), num_samples)

    monkeypatch.setattr(teacher.LocalModel, "load", classmethod(lambda cls, path: FakePolicy()))
    progress = []
    chosen = baselines.redistill(task, records, 4, "unused", samples_per_question=2, chunk=2,
                                 on_progress=lambda *counts: progress.append(counts))
    assert [records.index(e.record) for e in chosen] == [0, 2, 4, 0]  # firsts, then a second
    n = len(records)  # (prompts sampled, prompts, prompts solved) after each chunk of 2
    assert progress == [(min(i, n), n, (min(i, n) + 1) // 2) for i in range(2, n + 2, 2)]
    assert all(e.primitive == "redistill" for e in chosen)


def test_tailor_cli(tmp_path, capsys):
    config = tmp_path / "tailor.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ntask: gf\ntask_options: {{p: 11, steps: '2-3'}}\nnum_questions: 20\nbudget: 8\n")
    assert cli_main(["tailor", str(config), "--stage", "analyse"]) == 0
    assert cli_main(["tailor", str(config), "--stage", "curate"]) == 2
    assert "run the synthesize stage first" in capsys.readouterr().err
    assert cli_main(["tailor", str(config)]) == 0
    assert cli_main(["tailor", str(config), "--baselines"]) == 0
    assert "| distinct_2 |" in capsys.readouterr().out
    assert cli_main(["tailor", str(config), "--metrics", str(tmp_path / "run" / "curate" / "sft.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == 8
    assert cli_main(["tailor", str(config), "budget=0"]) == 2
    assert "budget must be >= 1" in capsys.readouterr().err
