"""Reasoning tasks: Knights & Knaves (`kk`), iGSM (`igsm`) and GF(p) chains (`gf`)."""

from __future__ import annotations

import importlib

from tailor_jax.errors import TailorError
from tailor_jax.tasks.base import Task, problem_key

TASK_MODULES = {"kk": "tailor_jax.tasks.kk", "igsm": "tailor_jax.tasks.igsm", "gf": "tailor_jax.tasks.gf"}


def get_task(name: str, **options) -> Task:
    """Build a task by name with its options (e.g. `get_task("kk", people=3)`)."""
    if name not in TASK_MODULES:
        raise TailorError(f"unknown task {name!r}; use one of {', '.join(TASK_MODULES)}")
    module = importlib.import_module(TASK_MODULES[name])
    return module.TASK_CLASS(**options)


__all__ = ["Task", "get_task", "problem_key", "TASK_MODULES"]
