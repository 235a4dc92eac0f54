"""Reasoning primitives per task, their compositions, and lookup by name.

Each task's library is a module `tailor_jax.primitives.<task>` with a module-level
`LIBRARY: dict[str, Primitive]` and optionally `VERIFICATION_PASS: Primitive` (a pass that
re-checks a stated answer; compositions append it to the library's other primitives). The
modules are imported on first use.
"""

from __future__ import annotations

import importlib

from tailor_jax.errors import TailorError
from tailor_jax.primitives.base import TAGS, Primitive

LIBRARY_MODULES = {"kk": "tailor_jax.primitives.kk", "igsm": "tailor_jax.primitives.igsm", "gf": "tailor_jax.primitives.gf"}
COMPOSITION_SEPARATOR = "+"


def _module(task: str):
    if task not in LIBRARY_MODULES:
        raise TailorError(f"no primitive library for task {task!r}; use one of {', '.join(LIBRARY_MODULES)}")
    try:
        return importlib.import_module(LIBRARY_MODULES[task])
    except ModuleNotFoundError as err:
        if err.name == LIBRARY_MODULES[task]:
            raise TailorError(f"the {task} primitive library ({LIBRARY_MODULES[task]}) is not installed yet") from None
        raise


def get_library(task: str) -> dict[str, Primitive]:
    """The built-in primitives of `task` by name (a copy; the library itself is not changed)."""
    return dict(_module(task).LIBRARY)


def verification_pass(task: str) -> Primitive | None:
    """The task's verification pass: `VERIFICATION_PASS` of its module, else None."""
    return getattr(_module(task), "VERIFICATION_PASS", None)


def compose(first: Primitive, second: Primitive) -> Primitive:
    """`first`'s trace followed by `second`'s. Checked part by part: the first part is as many
    lines as `first` renders for the record, the rest is checked by `second`."""
    if first.task != second.task:
        raise TailorError(f"cannot compose {first.task} primitive {first.name!r} with {second.task} primitive {second.name!r}")

    def render(record: dict) -> str:
        return first.render(record) + "\n" + second.render(record)

    def check(record: dict, trace: str) -> list[str]:
        try:
            head_lines = len(first.render(record).split("\n"))
        except Exception as err:  # noqa: BLE001 - a malformed record is reported, not raised
            return [f"record is malformed: {err!r}"]
        lines = trace.split("\n") if isinstance(trace, str) else []
        if len(lines) <= head_lines:
            return [f"trace has {len(lines)} lines; {first.name} alone renders {head_lines}, so the {second.name} part is missing"]
        head, tail = "\n".join(lines[:head_lines]), "\n".join(lines[head_lines:])
        return [f"{first.name}: {e}" for e in first.check(record, head)] + [
            f"{second.name}: {e}" for e in second.check(record, tail)
        ]

    return Primitive(
        name=f"{first.name}{COMPOSITION_SEPARATOR}{second.name}",
        task=first.task,
        description=f"{first.description} Then: {second.description}",
        tags=first.tags | second.tags,
        render=render,
        check=check,
        source="composition",
    )


def compositions(task: str) -> dict[str, Primitive]:
    """Each library primitive that does not already verify, followed by the verification pass."""
    passer = verification_pass(task)
    if passer is None:
        return {}
    out = {}
    for primitive in get_library(task).values():
        if "verification" not in primitive.tags:
            composed = compose(primitive, passer)
            out[composed.name] = composed
    return out


def all_primitives(task: str) -> dict[str, Primitive]:
    """Library primitives and their compositions."""
    return {**get_library(task), **compositions(task)}


def get_primitive(task: str, name: str) -> Primitive:
    """A library primitive or a composition by name (e.g. "forward+substitution_check")."""
    known = all_primitives(task)
    if name not in known:
        raise TailorError(f"unknown {task} primitive {name!r}; known: {', '.join(known)}")
    return known[name]


__all__ = [
    "TAGS", "Primitive", "LIBRARY_MODULES", "all_primitives", "compose", "compositions", "get_library",
    "get_primitive", "verification_pass",
]
