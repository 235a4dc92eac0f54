"""Reasoning tasks: Knights & Knaves (`kk`), iGSM (`igsm`) and GF(p) chains (`gf`).

`TASK_MODULES` is the one task registry: a task is a module (or package) that defines a `Task`
subclass, with its metadata as class attributes (see `tasks.base.Task`), and exports it as
`TASK_CLASS`. Everything else (the CLI flags of `tailor-jax generate`, the TFDS datasets,
evaluation levels, report labels, the Tailor metrics) reads a task through this registry.
"""

from __future__ import annotations

import importlib

from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import CliOption, DatasetConfig, DatasetLevel, Task, problem_key

TASK_MODULES = {"kk": "tailor_jax.tasks.kk", "igsm": "tailor_jax.tasks.igsm", "gf": "tailor_jax.tasks.gf"}


def task_class(name: str) -> type[Task]:
    """The `Task` subclass registered as `name` (its metadata, without building a task)."""
    if name not in TASK_MODULES:
        raise TailorError(f"unknown task {name!r}; use one of {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name]).TASK_CLASS


def get_task(name: str, **options) -> Task:
    """Build a task by name with its options (e.g. `get_task("kk", people=3)`)."""
    return task_class(name)(**options)


def task_names() -> list[str]:
    return list(TASK_MODULES)


__all__ = ["CliOption", "DatasetConfig", "DatasetLevel", "Task", "get_task", "problem_key", "task_class", "task_names",
           "TASK_MODULES"]
