"""Read built task datasets: `tfds.data_source` (ArrayRecord, random access) -> grain.

    records = open_source("gf", "sft", "test_k3", data_dir)   # grain.MapDataset of dicts
    records[0]["answer"], len(records)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import grain
import tensorflow_datasets as tfds

from tailor_jax.data import tfds_builders
from tailor_jax.errors import TailorError


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class RecordSource(Sequence):
    """Random access to the decoded records of one split (grain's data-source protocol:
    `__len__` and `__getitem__`); a record that cannot be read raises TailorError."""

    def __init__(self, source: Sequence, where: str, rebuild_hint: str):
        self._source = source
        self._where = where  # "dataset PATH split NAME", for error messages
        self._hint = rebuild_hint

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, int):
            raise TypeError("RecordSource takes one integer index")
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        try:
            record = json.loads(self._source[index]["record"])
        except Exception as err:  # a damaged file: say which one and how to fix it
            raise TailorError(
                f"{self._where} record {index} cannot be read ({_first_line(err)}); {self._hint}"
            ) from None
        if not isinstance(record, dict):
            raise TailorError(f"{self._where} record {index} is not a JSON object; {self._hint}")
        return record

    def __repr__(self) -> str:
        return f"RecordSource({self._where}, {len(self)} records)"


def open_records(task: str, config_name: str, split: str, data_dir: str | Path) -> RecordSource:
    """The records of one split of a built dataset, as a random-access sequence of dicts."""
    tfds_builders.check_config(task, config_name)
    path = tfds_builders.dataset_path(task, config_name, data_dir)
    hint = f"rebuild it with build_dataset({task!r}, {config_name!r}, {str(data_dir)!r}) after deleting {path}"
    if not (path / "dataset_info.json").is_file():
        raise TailorError(
            f"no {task}/{config_name} dataset at {path}; "
            f"build it with build_dataset({task!r}, {config_name!r}, {str(data_dir)!r})"
        )
    try:
        info = json.loads((path / "dataset_info.json").read_text())
        splits = [s["name"] for s in info["splits"]]
    except Exception as err:
        raise TailorError(f"dataset metadata {path / 'dataset_info.json'} is unreadable ({_first_line(err)}); {hint}") from None
    if split not in splits:
        raise TailorError(f"dataset {path} has no split {split!r}; it has {', '.join(splits)}")
    name = f"{tfds_builders.builder_class(task).name}/{config_name}:{tfds_builders.DATASET_VERSION}"
    try:
        source = tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
        len(source)
    except Exception as err:
        raise TailorError(f"dataset {path} split {split} cannot be opened ({_first_line(err)}); {hint}") from None
    records = RecordSource(source, f"dataset {path} split {split}", hint)
    if len(records):
        records[0], records[len(records) - 1]  # fail now, not mid-training, on a damaged file
    return records


def open_source(task: str, config_name: str, split: str, data_dir: str | Path) -> grain.MapDataset:
    """The decoded records of one split as a grain MapDataset (shuffle/map/batch from here)."""
    return grain.MapDataset.source(open_records(task, config_name, split, data_dir))
