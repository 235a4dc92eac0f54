"""Experiment configs: nested frozen dataclasses, loaded from YAML plus `key=value` overrides.

    cfg = load_config(MyExperimentConfig, "configs/tiny.yaml", ["optimizer.lr=3e-4", "mesh.fsdp=2"])

A config class is a frozen dataclass whose fields are typed with: int, float, bool, str,
`X | None`, `Literal[...]`, `tuple[X, ...]`, `tuple[X, Y]`, `list[X]`, `dict[str, X]` or another
config dataclass. Every field needs a default unless it must always be given. Checks of values
(lr > 0, ...) go in `__post_init__`, raising `TailorError` via `require(...)`; they then run both
for loaded configs and for configs built in code. Every error is one line naming the dotted key.

Override values are parsed as YAML scalars/lists (`a.b=3e-4`, `a.c=[1,2]`, `a.d=null`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from tailor_jax.errors import TailorError

C = TypeVar("C")


# --------------------------------------------------------------------------------------------
# YAML: PyYAML follows YAML 1.1, where `3e-4` (no dot) is a string. Configs are full of such
# learning rates, so this loader also resolves them as floats.
class _ConfigLoader(yaml.SafeLoader):
    pass


_FLOAT_PATTERN = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_PATTERN, list("-+0123456789."))


def _yaml_error_line(err: yaml.YAMLError, source: str) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    return f"{where}: invalid YAML: {problem}"


def parse_yaml_value(text: str) -> Any:
    """Parse one override value as a YAML scalar or flow list/map (`3e-4`, `true`, `[1, 2]`)."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as err:
        raise TailorError(_yaml_error_line(err, f"value {text!r}")) from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from a file (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise TailorError(f"config file {path} does not exist; pass the path of a YAML config")
    try:
        data = yaml.load(path.read_text(), Loader=_ConfigLoader)
    except yaml.YAMLError as err:
        raise TailorError(_yaml_error_line(err, str(path))) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TailorError(f"{path}: a config must be a YAML mapping of keys to values, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# Overrides.
def apply_overrides(data: Mapping, overrides: Iterable[str]) -> dict:
    """Return a deep copy of `data` with each `dotted.key=value` override set."""
    result = _deep_copy(data)
    for override in overrides:
        key, sep, value_text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TailorError(f"override {override!r} is not of the form key=value (e.g. optimizer.lr=3e-4)")
        parts = key.split(".")
        if any(not part for part in parts):
            raise TailorError(f"override key {key!r} has an empty part; use dotted names such as optimizer.lr")
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: i + 1])
                raise TailorError(f"override {key!r}: {prefix!r} is a value, not a section")
            node = child
        node[parts[-1]] = parse_yaml_value(value_text)
    return result


def _deep_copy(data: Mapping) -> dict:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


# --------------------------------------------------------------------------------------------
# Typed construction from plain data.
def require(condition: bool, message: str) -> None:
    """Raise TailorError(message) unless `condition`; for use in config `__post_init__`."""
    if not condition:
        raise TailorError(message)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a plain YAML value to annotation `tp`; `key` is the dotted path for errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except TailorError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise TailorError(f"config key {key!r} must be {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        choices = ", ".join(repr(a) for a in args)
        raise TailorError(f"config key {key!r} must be one of {choices}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise TailorError(f"config key {key!r} is a section ({tp.__name__}); give a mapping, got {_describe(value)}")
        return _build(tp, value, key)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TailorError(f"config key {key!r} must be a list, got {_describe(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise TailorError(f"config key {key!r} must be a list of {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise TailorError(f"config key {key!r} must be a mapping, got {_describe(value)}")
        key_type, value_type = args if args else (Any, Any)
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"config key {key!r}: unsupported annotation {tp!r} in a config class")
    raise TailorError(f"config key {key!r} must be {_type_name(tp)}, got {_describe(value)}")


def _build(cls: type[C], data: Mapping, prefix: str = "") -> C:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            full = f"{prefix}.{name}" if prefix else str(name)
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f" (did you mean {(prefix + '.' if prefix else '') + close[0]!r}?)" if close else ""
            known = ", ".join(fields)
            raise TailorError(f"unknown config key {full!r}{hint}; known keys here: {known}")
    kwargs = {}
    for name, field in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], full)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TailorError(f"config key {full!r} is required; set it in the YAML file or as {full}=VALUE")
    try:
        return cls(**kwargs)
    except TailorError as err:
        where = f"config section {prefix!r}" if prefix else f"config {cls.__name__}"
        raise TailorError(f"{where}: {err}") from None


def config_from_dict(cls: type[C], data: Mapping) -> C:
    """Build and validate config `cls` from plain (YAML-like) data."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a config dataclass")
    return _build(cls, data)


def load_config(cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = ()) -> C:
    """Load config `cls` from an optional YAML file, then apply `key=value` overrides."""
    data = read_yaml(path) if path is not None else {}
    return config_from_dict(cls, apply_overrides(data, overrides))


# --------------------------------------------------------------------------------------------
# Output.
def config_to_dict(cfg: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a config: the form YAML/JSON files hold."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def config_hash(cfg: Any, length: int = 16) -> str:
    """A stable hex digest of a config (or sub-config) for caching stage outputs.

    Depends only on the field values (not on object identity, dict order or Python version).
    """
    canonical = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def dump_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with `load_config`)."""
    from tailor_jax.atomic import write_text

    path = Path(path)
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False))
    return path


# --------------------------------------------------------------------------------------------
# Shared config sections.
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a learning-rate schedule, linear warmup and global-norm gradient clipping."""

    name: Literal["adamw"] = "adamw"
    lr: float = 1e-4  # peak learning rate (after warmup)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0  # linear warmup from 0 to lr over this many steps
    end_lr_ratio: float = 0.0  # cosine/linear: final lr = lr * end_lr_ratio
    weight_decay: float = 0.0  # decoupled; applied to parameters with ndim >= 2 only
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm; null disables clipping

    def __post_init__(self):
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        require(0.0 <= self.end_lr_ratio <= 1.0, f"end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(0.0 <= self.b1 < 1.0, f"b1 must be in [0, 1), got {self.b1}")
        require(0.0 <= self.b2 < 1.0, f"b2 must be in [0, 1), got {self.b2}")
        require(self.eps > 0, f"eps must be > 0, got {self.eps}")
        require(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or null, got {self.grad_clip}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to checkpoint, and which checkpoints to keep."""

    dir: str | None = None  # null: <run_dir>/checkpoints
    every_steps: int = 1000  # save every N steps (and always at the last step / on preemption)
    keep: int = 3  # keep the N most recent checkpoints
    keep_best: int = 0  # additionally keep the N best by `best_metric` (0: off)
    best_metric: str | None = None  # metric name passed to save(..., metrics={...})
    best_mode: Literal["min", "max"] = "min"
    async_save: bool = True  # write in a background thread; training continues meanwhile

    def __post_init__(self):
        require(self.every_steps >= 1, f"every_steps must be >= 1, got {self.every_steps}")
        require(self.keep >= 1, f"keep must be >= 1, got {self.keep}")
        require(self.keep_best >= 0, f"keep_best must be >= 0, got {self.keep_best}")
        require(
            self.keep_best == 0 or self.best_metric is not None,
            "keep_best > 0 needs best_metric (the metric name that ranks checkpoints)",
        )


# MeshConfig (mesh axis sizes and logical-axis rules) lives in `tailor_jax/parallel/mesh.py`;
# experiment configs import it from there (not re-exported here: it imports JAX, and loading a
# config should stay light).
