"""TFDS dataset builders (ArrayRecord files, no TensorFlow needed) for the three tasks.

Each builder writes one ArrayRecord file set per split with two features: `record` (the task
record as a JSON string) and `difficulty` (int). A config is a list of *levels*; a level is one
sampler (task options + seed) whose records go, in order, to the level's splits (tests first,
then train). Because a sampler never repeats a problem, the train and test records of one level
are disjoint; `generate_splits` checks disjointness across the whole config as well.

Sizes are per level and per role ("train" or "test"): `build_dataset("gf", "sft", d, train=50,
test=10)` writes 50 train and 10 test problems per k. Each level has a fixed seed, so a smaller
build's test records are the first ones of any larger build's, and with equal test sizes its
per-level train records are the first ones too.

Besides the problem configs, every builder has one config per warm-start SFT set (`SFT_SETS`:
`tailor`, `rule_based`, `four_star`, `redistill`) with a single `train` split. Those are not
generated but written from given records by `write_sft_set` (the Tailor pipeline's curate stage
and baselines do): task records plus `completion` (and `primitive`), what `tailor-jax sft`
trains on with `data.tfds_config: tailor`.

Read back with `tailor_jax.data.sources.open_source`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import shutil
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tailor_jax.errors import TailorError
from tailor_jax.tasks import TASK_MODULES, DatasetLevel, get_task, task_class

DATASET_VERSION = "1.0.0"
ROLES = ("train", "test")
FILE_FORMAT = "array_record"


@dataclasses.dataclass(eq=False)
class TaskConfig(tfds.core.BuilderConfig):
    levels: tuple[DatasetLevel, ...] = ()


def level_seed(task: str, options: Mapping) -> int:
    """The seed of a level's sampler: a stable hash of the task and its options, so the same
    level gets the same problems in every config (e.g. K&K n=3 tests in `n3` and `logic_rl`)."""
    return zlib.crc32(json.dumps([task, dict(options)], sort_keys=True).encode())


def split_counts(level: DatasetLevel, sizes: Mapping[str, int]) -> list[tuple[str, int]]:
    """(split, count) of a level with per-role size overrides applied."""
    return [(split, int(sizes.get(role, default))) for split, role, default in level.splits]


def check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    unknown = sorted(set(sizes) - set(ROLES))
    if unknown:
        raise TailorError(f"unknown dataset size {unknown[0]!r}; sizes are per level and role: train=N, test=N")
    for role, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise TailorError(f"dataset size {role} must be a positive integer, got {value!r}")
    return {role: int(value) for role, value in sizes.items()}


def generate_splits(task_name: str, levels: tuple[DatasetLevel, ...], sizes: Mapping[str, int]) -> dict[str, list[dict]]:
    """All records of a config, by split (pure; what the builder writes)."""
    sizes = check_sizes(sizes)
    by_split: dict[str, list[dict]] = {}
    for level in levels:
        counts = split_counts(level, sizes)
        task = get_task(task_name, **level.options)
        records = list(task.generate(sum(n for _, n in counts), level_seed(task_name, level.options)))
        start = 0
        for split, n in counts:
            by_split.setdefault(split, []).extend(records[start : start + n])
            start += n
    check_disjoint(task_name, by_split)
    return by_split


def check_disjoint(task_name: str, by_split: Mapping[str, list[dict]]) -> None:
    """No problem may appear twice within a split or in both a train and a test split."""
    content_key = task_class(task_name).content_key
    owner: dict[str, str] = {}
    for split, records in by_split.items():
        for record in records:
            key = content_key(record)
            if key in owner:
                raise TailorError(
                    f"{task_name} problem {record.get('id')} appears in both {owner[key]} and {split}; "
                    "the task generator repeated a problem (report this as a bug)"
                )
            owner[key] = split


# --- configs -----------------------------------------------------------------------------
def task_configs(task: str) -> list[TaskConfig]:
    """The task's problem sets (`Task.dataset_configs`) as TFDS builder configs."""
    return [TaskConfig(name=c.name, description=c.description, levels=c.levels) for c in task_class(task).dataset_configs()]


SFT_SETS = {
    "tailor": "the Tailor pipeline's curated SFT set (tailor-jax tailor CONFIG)",
    "rule_based": "the rule_based baseline SFT set (tailor-jax tailor CONFIG --baselines)",
    "four_star": "the four_star baseline SFT set (tailor-jax tailor CONFIG --baselines)",
    "redistill": "the redistill baseline SFT set (tailor-jax tailor CONFIG --baselines)",
}


def _sft_set_configs() -> list[TaskConfig]:
    return [TaskConfig(name=name, description=f"{description}: records with a completion", levels=())
            for name, description in SFT_SETS.items()]


# --- builders ----------------------------------------------------------------------------
class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: one class per task, configs per difficulty setting."""

    TASK: ClassVar[str]
    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "First release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 derives this through `importlib_resources`, which it declares only for
        # Python < 3.9 (ModuleNotFoundError without it); our builders live in a plain file.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, sizes: Mapping[str, int] | None = None, records: Sequence[dict] | None = None, **kwargs):
        self._sizes = check_sizes(sizes or {})
        self._records = records  # the train split of an SFT-set config
        kwargs.setdefault("file_format", FILE_FORMAT)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"tailor-jax {self.TASK} problems: each example is one JSON record plus its difficulty.",
            features=tfds.features.FeaturesDict(
                {"record": tfds.features.Text(), "difficulty": tfds.features.Scalar(dtype=np.int32)}
            ),
            disable_shuffling=True,  # keep generation order; readers shuffle with grain
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        if self.builder_config.name in SFT_SETS:
            if self._records is None:
                raise TailorError(f"the {self.builder_config.name} config is an SFT set; write it with write_sft_set")
            return {"train": self._generate_examples(list(self._records))}
        by_split = generate_splits(self.TASK, self.builder_config.levels, self._sizes)
        return {split: self._generate_examples(records) for split, records in by_split.items()}

    def _generate_examples(self, records: list[dict]):
        task = get_task(self.TASK)
        for index, record in enumerate(records):
            yield index, {"record": json.dumps(record, separators=(",", ":")), "difficulty": task.difficulty(record)}


_BUILDERS: dict[str, type[_TaskBuilder]] = {}


def builder_class(task: str) -> type[_TaskBuilder]:
    """The task's TFDS builder, made once per process from the task registry: class `TailorKk`
    (TFDS name `tailor_kk`) for task `kk`, with the task's configs and the SFT-set configs."""
    if task not in TASK_MODULES:
        raise TailorError(f"no dataset builder for task {task!r}; use one of {', '.join(TASK_MODULES)}")
    if task not in _BUILDERS:
        _BUILDERS[task] = type(f"Tailor{task.capitalize()}", (_TaskBuilder,), {
            "TASK": task, "BUILDER_CONFIGS": task_configs(task) + _sft_set_configs(), "__module__": __name__,
        })
    return _BUILDERS[task]


def config_names(task: str) -> list[str]:
    return [config.name for config in builder_class(task).BUILDER_CONFIGS]


def check_config(task: str, config_name: str) -> None:
    names = config_names(task)
    if config_name not in names:
        raise TailorError(f"unknown {task} dataset config {config_name!r}; use one of {', '.join(names)}")


def dataset_path(task: str, config_name: str, data_dir: str | Path) -> Path:
    """Where TFDS keeps a built dataset: DATA_DIR/tailor_TASK/CONFIG/VERSION."""
    return Path(data_dir) / builder_class(task).name / config_name / DATASET_VERSION


def build_dataset(task: str, config_name: str, data_dir: str | Path, **sizes: int) -> Path:
    """Build one config of a task's dataset under `data_dir` and return its directory.

    `sizes` (train=N, test=N) override the per-level counts. An existing dataset with the same
    split sizes is reused; one with different sizes is left alone and reported.
    """
    check_config(task, config_name)
    if config_name in SFT_SETS:
        raise TailorError(f"{task}/{config_name} is an SFT set, not generated: the Tailor pipeline writes it (write_sft_set)")
    sizes = check_sizes(sizes)
    data_dir = _data_dir(data_dir)
    config = next(c for c in builder_class(task).BUILDER_CONFIGS if c.name == config_name)
    wanted: dict[str, int] = {}
    for level in config.levels:
        for split, n in split_counts(level, sizes):
            wanted[split] = wanted.get(split, 0) + n
    path = dataset_path(task, config_name, data_dir)
    if (path / "dataset_info.json").is_file():
        existing = {name: info.num_examples for name, info in tfds.builder_from_directory(path).info.splits.items()}
        if existing != wanted:
            raise TailorError(
                f"{path} already holds a dataset with other split sizes {existing}; "
                "delete that directory or choose another data_dir"
            )
        return path
    builder = builder_class(task)(config=config_name, data_dir=str(data_dir), sizes=sizes)
    builder.download_and_prepare()
    return path


def write_sft_set(task: str, name: str, records: Sequence[dict], data_dir: str | Path) -> Path:
    """Write an SFT set (task records with a `completion` string, e.g. `curate/sft.jsonl`'s lines)
    as the `train` split of config `name` under `data_dir`, replacing an earlier one; returns
    its directory. `tailor-jax sft` reads it with data.tfds_dir = data_dir, data.tfds_config = name."""
    if name not in SFT_SETS:
        raise TailorError(f"unknown SFT set {name!r}; use one of {', '.join(SFT_SETS)}")
    builder = builder_class(task)
    if not records:
        raise TailorError(f"the {name} SFT set is empty; nothing to write")
    for index, record in enumerate(records):
        if record.get("task") != task or not isinstance(record.get("completion"), str):
            raise TailorError(f"{name} SFT record {index} is not a {task} record with a completion string")
    data_dir = _data_dir(data_dir)
    path = dataset_path(task, name, data_dir)
    if path.exists():
        shutil.rmtree(path)
    # A by-product of the Tailor stages: TFDS's "Downloading and preparing" lines and progress bars
    # would bury the stage summaries, so they are silenced here.
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            builder(config=name, data_dir=str(data_dir), records=records).download_and_prepare()
    finally:
        tfds.display_progress_bar(True)
    return path


def _data_dir(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise TailorError(f"data_dir {data_dir} is a file; give a directory")
    return data_dir


# --- CLI: `tailor-jax build-dataset TASK CONFIG --data-dir DIR` ----------------------------
def register(subparsers) -> None:
    parser = subparsers.add_parser("build-dataset", help="build a task dataset (TFDS, ArrayRecord files)")
    parser.add_argument("task", choices=sorted(TASK_MODULES), help="which task")
    parser.add_argument("config", help="dataset config, e.g. kk: n2..n8, logic_rl; igsm: med, hard; gf: sft, rl, rl_long "
                        "(the SFT-set configs tailor, rule_based, ... are written by `tailor-jax tailor`)")
    parser.add_argument("--data-dir", required=True, help="directory that holds TFDS datasets")
    parser.add_argument("--train", type=int, help="train problems per level (default: the config's)")
    parser.add_argument("--test", type=int, help="test problems per level (default: the config's)")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    sizes = {role: getattr(args, role) for role in ROLES if getattr(args, role) is not None}
    path = build_dataset(args.task, args.config, args.data_dir, **sizes)
    splits = tfds.builder_from_directory(path).info.splits
    summary = ", ".join(f"{name} {split.num_examples}" for name, split in sorted(splits.items()))
    print(f"{args.task}/{args.config} at {path}: {summary}")
    return 0
