"""Typed configs: frozen dataclasses <-> YAML, dotted overrides, sweep grids (host side).

One config system: the schema is a tree of frozen dataclasses (defaults, units in the
field names such as ``cutoff_A``, ``timestep_fs``, docstrings on the classes).  This
module turns YAML mappings into those dataclasses *strictly*:

* unknown keys raise ``ConfigError`` naming the full dotted path and the known keys
  (so a typo like ``cuttoff_A`` never silently falls back to a default);
* values are checked against the field annotation (int, float, bool, str, tuples,
  optional, nested dataclasses); ints are accepted for floats, lists for tuples;
* a value given with the wrong unit suffix (``cutoff_nm``) is an unknown key.

Overrides use dotted paths, ``model.cutoff_A=4.5``, values parsed as YAML scalars.
Sweeps are grids over keys: ``{"model.variant": ["sr", "full"], "seed": [0, 1]}``
expands to the 4 resolved configs.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that does not match its schema (unknown key, wrong type, bad value)."""


def _resolve_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value, annotation, path: str):
    """Check/convert ``value`` against a type annotation; raise ConfigError with ``path``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{path}: {value!r} matches none of {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {args}")
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}: expected a mapping for {annotation.__name__}, got {value!r}"
            )
        return from_dict(annotation, value, path=path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(
                _coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)
            )
        if args and len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(
            _coerce(v, a, f"{path}[{i}]")
            for i, (v, a) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept numeric strings.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict | None, *, path: str = ""):
    """Build the frozen dataclass ``cls`` from a (nested) mapping, strictly.

    Raises:
        ConfigError: unknown keys, missing required keys, wrong types, or a
            ``ValueError`` raised by the dataclass's own ``__post_init__`` validation.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown key(s) {[where + k for k in unknown]} for {cls.__name__}; "
            f"known keys: {sorted(fields)}"
        )
    hints = _resolve_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{path}.{name}" if path else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{path or cls.__name__}: missing required key(s) {missing}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path or cls.__name__}: {error}") from error


def to_dict(config) -> dict:
    """Plain nested dict (tuples -> lists) of a config dataclass, for YAML output."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {
                f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
            }
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key, yaml.safe_load(raw) if raw.strip() else None


def set_dotted(data: dict, key: str, value) -> dict:
    """Return a copy of the nested mapping ``data`` with ``key`` (dotted) set to ``value``."""
    head, _, rest = key.partition(".")
    out = dict(data)
    if rest:
        child = out.get(head) or {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {head!r} is not a section")
        out[head] = set_dotted(child, rest, value)
    else:
        out[head] = value
    return out


def load_config(cls, source=None, overrides=()):
    """Load ``cls`` from a YAML file path, a mapping or None (defaults), then apply overrides.

    Args:
        cls: the schema dataclass.
        source: path to a YAML file, a dict, or None.
        overrides: iterable of ``"dotted.key=value"`` strings, applied in order.
    """
    if source is None:
        data = {}
    elif isinstance(source, dict):
        data = source
    else:
        with open(source) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: the top level of a config file must be a mapping"
            )
    for text in overrides:
        key, value = parse_override(text)
        data = set_dotted(data, key, value)
    return from_dict(cls, data)


def expand_sweep(
    cls, base: dict, grid: dict[str, list]
) -> list[tuple[dict[str, Any], Any]]:
    """All configs of a grid sweep: the product of the value lists of ``grid``.

    Args:
        cls: schema dataclass.
        base: the base mapping (e.g. a loaded YAML file).
        grid: dotted key -> list of values.

    Returns:
        ``[(point, config), ...]`` with ``point`` the dict of swept values.
    """
    keys = list(grid)
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"sweep values for {key!r} must be a non-empty list")
    out = []
    for combination in itertools.product(*(grid[k] for k in keys)):
        data = base
        point = dict(zip(keys, combination, strict=True))
        for key, value in point.items():
            data = set_dotted(data, key, value)
        out.append((point, from_dict(cls, data)))
    return out
