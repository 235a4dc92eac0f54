"""TFDS/ArrayRecord task datasets: build tiny ones, read back through tfds.data_source and grain."""

import json

import grain
import pytest
import tensorflow_datasets as tfds

from tailor_jax.data import tfds_builders
from tailor_jax.data.sources import open_records, open_source
from tailor_jax.data.tfds_builders import build_dataset, dataset_path, level_seed
from tailor_jax.errors import TailorError
from tailor_jax.tasks import get_task

tfds.disable_progress_bar()  # keep failure output readable
GF_TINY = {"train": 6, "test": 3}


def all_records(task, config, data_dir):
    path = dataset_path(task, config, data_dir)
    splits = tfds.builder_from_directory(path).info.splits
    return {split: list(open_source(task, config, split, data_dir)) for split in splits}


def gf_key(record):
    return (record["p"], record["kind"], record["given"], json.dumps(record["ops"]))


@pytest.fixture(scope="module")
def gf_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("gf_data")
    build_dataset("gf", "sft", data_dir, **GF_TINY)
    return data_dir


def test_gf_layout_and_tfds_metadata(gf_dir):
    path = dataset_path("gf", "sft", gf_dir)
    assert path == gf_dir / "tailor_gf" / "sft" / "1.0.0"
    builder = tfds.builder_from_directory(path)
    assert builder.info.file_format.value == "array_record"
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == {"train": 24, "test_k2": 3, "test_k3": 3, "test_k4": 3, "test_k5": 3}
    assert sorted(p.name for p in path.glob("*.array_record-*")) == sorted(
        f"tailor_gf-{s}.array_record-00000-of-00001" for s in sizes
    )


def test_gf_records_equal_the_generator(gf_dir):
    train = list(open_source("gf", "sft", "train", gf_dir))
    expected_train = []
    for k in range(2, 6):
        options = {"p": 11, "steps": k}
        records = list(get_task("gf", **options).generate(9, seed=level_seed("gf", options)))
        assert list(open_source("gf", "sft", f"test_k{k}", gf_dir)) == records[:3]
        expected_train += records[3:]
    assert train == expected_train


def test_gf_read_through_tfds_data_source(gf_dir):
    source = tfds.data_source("tailor_gf/sft", split="test_k4", data_dir=str(gf_dir), download=False)
    examples = [source[i] for i in range(len(source))]
    records = [json.loads(e["record"]) for e in examples]
    assert [int(e["difficulty"]) for e in examples] == [4, 4, 4]
    assert records == list(open_records("gf", "sft", "test_k4", gf_dir))
    assert all(get_task("gf").solve(r) == r["answer"] for r in records)


def test_gf_splits_are_disjoint(gf_dir):
    by_split = all_records("gf", "sft", gf_dir)
    keys = [gf_key(r) for records in by_split.values() for r in records]
    assert len(keys) == len(set(keys)) == 36


def test_grain_pipeline_over_a_split(gf_dir):
    records = open_source("gf", "sft", "train", gf_dir)
    assert isinstance(records, grain.MapDataset)
    ids = [r["id"] for r in records]
    shuffled = [r["id"] for r in records.shuffle(seed=0)]
    assert sorted(shuffled) == sorted(ids) and shuffled != ids
    answers = list(records.map(lambda r: r["answer"]).batch(4))
    assert len(answers) == 6 and [int(a) for a in answers[0]] == [r["answer"] for r in list(records)[:4]]
    assert list(grain.MapDataset.source(open_records("gf", "sft", "train", gf_dir))) == list(records)


def test_build_is_deterministic_and_smaller_builds_hold_the_same_problems(gf_dir, tmp_path):
    build_dataset("gf", "sft", tmp_path / "again", **GF_TINY)
    full = all_records("gf", "sft", gf_dir)
    assert all_records("gf", "sft", tmp_path / "again") == full
    build_dataset("gf", "sft", tmp_path / "small_test", train=2, test=1)
    for split, records in all_records("gf", "sft", tmp_path / "small_test").items():
        if split != "train":
            assert records == full[split][:1]
    build_dataset("gf", "sft", tmp_path / "small_train", train=2, test=3)
    small_train = all_records("gf", "sft", tmp_path / "small_train")["train"]
    for k in range(2, 6):
        assert [r for r in small_train if r["k"] == k] == [r for r in full["train"] if r["k"] == k][:2]


def test_existing_dataset_is_reused_not_clobbered(gf_dir):
    path = dataset_path("gf", "sft", gf_dir)
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert build_dataset("gf", "sft", gf_dir, **GF_TINY) == path
    with pytest.raises(TailorError, match="other split sizes"):
        build_dataset("gf", "sft", gf_dir, train=7, test=3)
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before


def test_missing_and_bad_requests_give_one_line_errors(gf_dir, tmp_path):
    cases = [
        (lambda: open_source("gf", "rl", "train", gf_dir), "build it with build_dataset('gf', 'rl'"),
        (lambda: open_source("gf", "sft", "test_k9", gf_dir), "has no split 'test_k9'"),
        (lambda: open_source("gf", "nope", "train", gf_dir), "unknown gf dataset config"),
        (lambda: open_source("chess", "sft", "train", gf_dir), "no dataset builder for task"),
        (lambda: build_dataset("gf", "sft", tmp_path, train=0), "positive integer"),
        (lambda: build_dataset("gf", "sft", tmp_path, validation=3), "unknown dataset size"),
    ]
    for call, message in cases:
        with pytest.raises(TailorError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)


def test_corrupt_files_name_the_path_and_the_fix(gf_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(gf_dir, copy)
    path = dataset_path("gf", "sft", copy)
    shard = path / "tailor_gf-test_k3.array_record-00000-of-00001"
    data = shard.read_bytes()
    shard.write_bytes(data[:100] + b"\0" * 200 + data[300:])
    (path / "tailor_gf-test_k4.array_record-00000-of-00001").unlink()
    (path / "tailor_gf-test_k5.array_record-00000-of-00001").write_bytes(b"")
    for split in ("test_k3", "test_k4", "test_k5"):
        with pytest.raises(TailorError) as err:
            open_source("gf", "sft", split, copy)
        message = str(err.value)
        assert str(path) in message and f"split {split}" in message and "build_dataset(" in message
        assert "\n" not in message
    (path / "dataset_info.json").write_text("{not json")
    with pytest.raises(TailorError, match="unreadable"):
        open_source("gf", "sft", "train", copy)


def test_disjointness_check_catches_a_repeated_problem():
    record = next(get_task("gf").generate(1, seed=0))
    with pytest.raises(TailorError, match="appears in both train and test"):
        tfds_builders.check_disjoint("gf", {"train": [record], "test": [dict(record, id="other")]})


def test_configs_cover_the_literature_splits():
    names = tfds_builders.config_names
    sft_sets = ["tailor", "rule_based", "four_star", "redistill"]
    assert names("kk") == [f"n{n}" for n in range(2, 9)] + ["logic_rl"] + sft_sets
    assert names("igsm") == ["med", "hard"] + sft_sets
    assert names("gf") == ["sft", "rl", "rl_long", "sft_p13", "rl_p13", "rl_long_p13"] + sft_sets
    kk = {c.name: c for c in tfds_builders.builder_class("kk").BUILDER_CONFIGS}
    assert kk["n2"].levels[0].splits == (("test", "test", 100), ("train", "train", 200))
    assert kk["n5"].levels[0].splits == (("test", "test", 100), ("train", "train", 1000))
    trained = [level.options["people"] for level in kk["logic_rl"].levels if len(level.splits) == 2]
    assert trained == [3, 4, 5, 6, 7]
    gf = {c.name: c for c in tfds_builders.builder_class("gf").BUILDER_CONFIGS}
    assert [level.options["steps"] for level in gf["rl_long"].levels] == list(range(6, 16))


# --- SFT sets (written by the Tailor pipeline) -------------------------------------------------
def sft_lines(count, seed=0):
    task = get_task("gf", p=11, steps="2-4")
    return [dict(r, completion=task.target(r), primitive="forward") for r in task.generate(count, seed)]


def test_sft_set_round_trips_and_a_rewrite_replaces_it(tmp_path):
    lines = sft_lines(5)
    path = tfds_builders.write_sft_set("gf", "tailor", lines, tmp_path)
    assert path == dataset_path("gf", "tailor", tmp_path)
    assert list(open_records("gf", "tailor", "train", tmp_path)) == lines
    source = tfds.data_source("tailor_gf/tailor", split="train", data_dir=str(tmp_path), download=False)
    assert [int(source[i]["difficulty"]) for i in range(len(source))] == [r["k"] for r in lines]
    shorter = sft_lines(3, seed=1)
    tfds_builders.write_sft_set("gf", "tailor", shorter, tmp_path)  # a rerun of curate: replaced
    assert list(open_records("gf", "tailor", "train", tmp_path)) == shorter
    tfds_builders.write_sft_set("gf", "four_star", lines, tmp_path)  # another set beside it
    assert list(open_records("gf", "four_star", "train", tmp_path)) == lines
    assert list(open_records("gf", "tailor", "train", tmp_path)) == shorter


def test_sft_set_bad_requests_give_one_line_errors(tmp_path):
    lines = sft_lines(2)
    cases = [
        (lambda: tfds_builders.write_sft_set("gf", "sft", lines, tmp_path), "unknown SFT set 'sft'"),
        (lambda: tfds_builders.write_sft_set("gf", "tailor", [], tmp_path), "is empty"),
        (lambda: tfds_builders.write_sft_set("gf", "tailor", [dict(lines[0], completion=None)], tmp_path),
         "record 0 is not a gf record with a completion"),
        (lambda: tfds_builders.write_sft_set("kk", "tailor", lines, tmp_path), "record 0 is not a kk record"),
        (lambda: tfds_builders.write_sft_set("chess", "tailor", lines, tmp_path), "no dataset builder"),
        (lambda: build_dataset("gf", "tailor", tmp_path), "is an SFT set, not generated"),
        (lambda: open_source("gf", "rule_based", "train", tmp_path), "no gf/rule_based dataset"),
    ]
    for call, message in cases:
        with pytest.raises(TailorError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)


# --- the other tasks (run once their modules exist) -----------------------------------------
def test_kk_datasets(tmp_path):
    pytest.importorskip("tailor_jax.tasks.kk")
    build_dataset("kk", "n3", tmp_path, train=5, test=3)
    by_split = all_records("kk", "n3", tmp_path)
    records = list(get_task("kk", people=3).generate(8, seed=level_seed("kk", {"people": 3})))
    assert by_split == {"test": records[:3], "train": records[3:]}
    build_dataset("kk", "logic_rl", tmp_path, train=2, test=2)
    by_split = all_records("kk", "logic_rl", tmp_path)
    assert sorted(by_split) == sorted(["train"] + [f"test_n{n}" for n in range(2, 9)])
    assert [r["n_people"] for r in by_split["train"]] == [3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert by_split["test_n3"] == list(open_source("kk", "n3", "test", tmp_path))[:2]  # shared test sets
    keys = [json.dumps(r["statements"]) for rs in by_split.values() for r in rs]
    assert len(keys) == len(set(keys))
    source = tfds.data_source("tailor_kk/logic_rl", split="test_n8", data_dir=str(tmp_path), download=False)
    assert [int(source[i]["difficulty"]) for i in range(len(source))] == [8, 8]


def test_igsm_datasets(tmp_path):
    pytest.importorskip("tailor_jax.tasks.igsm")
    build_dataset("igsm", "med", tmp_path, train=3, test=2)
    by_split = all_records("igsm", "med", tmp_path)
    config = next(c for c in tfds_builders.builder_class("igsm").BUILDER_CONFIGS if c.name == "med")
    for level in config.levels:
        ((split, _, _),) = level.splits
        want = 3 if split == "train" else 2
        records = list(get_task("igsm", **level.options).generate(want, seed=level_seed("igsm", level.options)))
        assert by_split[split] == records
    task = get_task("igsm")
    for split, records in by_split.items():
        if split != "train":
            assert {task.difficulty(r) for r in records} == {int(split.removeprefix("test_op"))}
    keys = [(r["problem"], r["question"]) for rs in by_split.values() for r in rs]
    assert len(keys) == len(set(keys))


def test_build_dataset_cli(tmp_path, capsys):
    from tailor_jax.cli import main as cli_main

    argv = ["build-dataset", "gf", "rl", "--data-dir", str(tmp_path), "--train", "2", "--test", "1"]
    assert cli_main(argv) == 0
    assert "train 8" in capsys.readouterr().out
    assert [r["k"] for r in open_source("gf", "rl", "train", tmp_path)] == [6, 6, 7, 7, 8, 8, 9, 9]
    assert cli_main([*argv[:-1], "5"]) == 2  # other sizes over an existing dataset
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "delete that directory" in err
