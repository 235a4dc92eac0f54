"""Atomic writes (`tailor_jax.atomic`) and the stage cache (`tailor_jax.stage_cache`), including
Tailor pipeline directories written before the cache was shared (`done.json`)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from etils import epath

from tailor_jax import atomic
from tailor_jax.config import config_from_dict, config_hash, config_to_dict
from tailor_jax.tailor import pipeline as P
from tailor_jax.stage_cache import read_stage, stage_status, write_stage


def test_write_text_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deeper" / "out.json"
    atomic.write_json(path, {"a": 1})
    atomic.write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic.open_for_write(path) as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_write_text_on_an_epath(tmp_path):
    path = epath.Path(tmp_path) / "manifest.json"
    atomic.write_json(path, {"files": {}}, indent=0)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"files": {}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_replace_dir_swaps_in_a_complete_directory(tmp_path):
    final = tmp_path / "model"
    (tmp_path / "model.tmp").mkdir()
    (tmp_path / "model.tmp" / "torn").write_text("from an interrupted export")
    final.mkdir()
    (final / "old").write_text("old")

    def write(tmp):
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")

    atomic.replace_dir(final, write)
    assert sorted(p.name for p in final.iterdir()) == ["config.json"]
    assert not (tmp_path / "model.tmp").exists()


def test_stage_status(tmp_path):
    stage = tmp_path / "sft"
    assert stage_status(stage, {"h1"}) == "fresh"
    write_stage(stage, {"hash": "h1", "status": "running"})
    assert stage_status(stage, {"h1"}) == "resume" and stage_status(stage, {"h2"}) == "fresh"
    write_stage(stage, {"hash": "h1", "status": "done", "summary": "ok"})
    assert stage_status(stage, {"h0", "h1"}) == "done"
    assert read_stage(stage)["summary"] == "ok"
    (stage / "stage.json").write_text('{"hash": "h1", "sta')  # torn
    assert read_stage(stage) is None and stage_status(stage, {"h1"}) == "fresh"


def test_legacy_done_json_counts_as_done_until_a_stage_json_is_written(tmp_path):
    stage = tmp_path / "analyse"
    stage.mkdir()
    (stage / "done.json").write_text(json.dumps({"settings_hash": "abc"}))
    assert read_stage(stage) == {"hash": "abc", "status": "done"}
    assert stage_status(stage, {"abc"}) == "done" and stage_status(stage, {"other"}) == "fresh"
    write_stage(stage, {"hash": "new", "status": "running"})  # rerun with other settings: stage.json wins
    assert stage_status(stage, {"abc"}) == "fresh" and stage_status(stage, {"new"}) == "resume"
    (stage / "stage.json").unlink()
    (stage / "done.json").write_text("[1, 2]")  # not a marker
    assert read_stage(stage) is None


def test_a_pipeline_directory_from_before_the_shared_cache_is_still_done(tmp_path):
    cfg = config_from_dict(P.TailorConfig, {"run_dir": str(tmp_path), "task": "gf", "task_options": {"p": 11},
                                            "num_questions": 8, "budget": 4})
    for stage in P.STAGES:  # what older versions wrote after each stage
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "done.json").write_text(json.dumps({"settings_hash": config_hash(P.stage_settings(cfg, stage))}))
    assert all(P.is_done(cfg, stage) for stage in P.STAGES)
    changed = dataclasses.replace(cfg, budget=3)
    assert P.is_done(changed, "analyse") and not P.is_done(changed, "curate")  # the budget is curate's only
    P.mark_done(changed, "curate")
    assert P.is_done(changed, "curate") and not P.is_done(cfg, "curate")
    assert json.loads((tmp_path / "curate" / "stage.json").read_text())["status"] == "done"


def test_a_curate_stage_from_before_primitive_term_is_still_done_and_entropy_reruns_only_curate(tmp_path):
    # curate.primitive_term was added on 2026-12-07: a curate stage written before then hashed its
    # settings without the key, and must still count as done under the default ("count")
    cfg = config_from_dict(P.TailorConfig, {"run_dir": str(tmp_path), "task": "gf", "task_options": {"p": 11},
                                            "num_questions": 8, "budget": 4})
    before = P.stage_settings(cfg, "curate")
    before["curate"] = {k: v for k, v in before["curate"].items() if k != "primitive_term"}
    write_stage(tmp_path / "curate", {"hash": config_hash(before), "status": "done"})
    assert P.is_done(cfg, "curate")
    balanced = config_from_dict(P.TailorConfig, {**config_to_dict(cfg), "curate": {"primitive_term": "entropy"}})
    assert not P.is_done(balanced, "curate")
    assert P.stage_settings(balanced, "synthesize") == P.stage_settings(cfg, "synthesize")  # the stages before curate stay
