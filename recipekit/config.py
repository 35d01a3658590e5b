"""Strict, typed recipe configs: YAML file + ``--set key=value`` overrides.

Each recipe declares its config as a dataclass. Loading it:
- rejects unknown keys and suggests the close matches,
- checks and coerces every value against the field's type and bounds,
- runs the dataclass's own cross-field ``check()``,
and reports every problem at once, as one line per field, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from recipekit.errors import UsageError


class ConfigError(UsageError):
    """One or more invalid config fields; ``problems`` holds one line per field."""


def option(default: Any = dataclasses.MISSING, *, help: str, min: float | None = None,
           max: float | None = None, above: float | None = None, default_factory: Any = dataclasses.MISSING):
    """A config field with its help text and numeric bounds (``above`` is an exclusive minimum)."""
    meta = {"help": help, "min": min, "max": max, "above": above}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        args = typing.get_args(tp)
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in typing.get_args(tp) if a is not type(None)]
        suffix = " or null" if type(None) in typing.get_args(tp) else ""
        return " or ".join(parts) + suffix
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(item, describe_type(item))}"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _display_key(key: Any) -> str:
    """A key as typed when it is a plain name, quoted otherwise (empty, spaces, odd characters)."""
    if isinstance(key, str) and key and all(ch.isalnum() or ch in "_.-" for ch in key):
        return key
    return _short(key)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp``, or raise ValueError with what was expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except ValueError:
                pass
        raise ValueError(f"expected {describe_type(tp)}, got {_short(value)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError(f"expected {describe_type(tp)}, got {_short(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"expected {describe_type(tp)}, got {_short(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"expected a mapping with string keys, got {_short(value)}")
        key_tp, val_tp = typing.get_args(tp) or (str, Any)
        return {k: coerce(v, val_tp) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {_short(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise ValueError(f"expected an integer, got {_short(value)}")
    if tp is float:
        number: float
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # PyYAML reads "1e-3" (no dot) as a string, so accept numeric strings for float fields.
            try:
                number = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {_short(value)}") from None
        else:
            raise ValueError(f"expected a number, got {_short(value)}")
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {_short(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {_short(value)}")
    raise TypeError(f"unsupported config type {tp!r}")


def check_bounds(name: str, value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    """The one-line problem with a number outside a field's ``min``/``above``/``max`` metadata, else None."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    low, high, above = meta.get("min"), meta.get("max"), meta.get("above")
    if low is not None and value < low:
        return f"{name}: must be >= {low}, got {value}"
    if above is not None and value <= above:
        return f"{name}: must be > {above}, got {value}"
    if high is not None and value > high:
        return f"{name}: must be <= {high}, got {value}"
    return None


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``lr=1e-4``, ``use_peft=false``, ``targets=[q_proj]``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"--set {_short(text)}: expected key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"config: file not found: {path}"]) from None
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"config: {path} is not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ConfigError([f"config: {path} is not valid YAML{line}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config: {path} must be a mapping of key: value, got {type(data).__name__}"])
    return data


def build(cls: type, values: dict[str, Any]) -> Any:
    """Validate ``values`` against dataclass ``cls`` and return an instance; raise ConfigError listing every problem."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"{_display_key(key)}: unknown key{hint}")
            continue
        try:
            kwargs[key] = coerce(value, hints[key])
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            continue
        bound_problem = check_bounds(key, kwargs[key], fields[key].metadata)
        if bound_problem:
            problems.append(bound_problem)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if not any(p.startswith(f"{name}:") for p in problems):
                problems.append(f"{name}: required key is missing")
    if problems:
        raise ConfigError(problems)
    cfg = cls(**kwargs)
    check = getattr(cfg, "check", None)
    if check is not None:
        problems = list(check())
        if problems:
            raise ConfigError(problems)
    return cfg


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides; ``a.b=v`` sets key ``b`` inside mapping ``a``."""
    merged = dict(values)
    for text in overrides:
        key, value = parse_override(text)
        head, dot, tail = key.partition(".")
        if dot:
            inner = merged.get(head)
            inner = dict(inner) if isinstance(inner, dict) else {}
            inner[tail] = value
            merged[head] = inner
        else:
            merged[key] = value
    return merged


def load(cls: type, path: str | Path | None, overrides: list[str] = ()) -> Any:
    values = read_yaml(path) if path is not None else {}
    return build(cls, apply_overrides(values, list(overrides)))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, header: str = "") -> str:
    body = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True, width=100)
    return header + body


def describe_fields(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type description, default, help) for every field: used for docs and ``--help``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        rows.append((f.name, describe_type(hints[f.name]), default, f.metadata.get("help", "")))
    return rows
