"""Config schemas: frozen dataclasses with declared constraints, strict TOML loading, TOML writing.

A config class derives from ``Schema`` and declares each field's bounds next to the field with
``setting(default, ge=…, gt=…, le=…, lt=…)``; ``Schema.__post_init__`` checks them (elementwise for
tuples), refuses NaN / ±inf in every float (a typo like ``nan`` in a config must not run), and then
calls ``check()``, where a class states only the rules that tie fields together. We chose this
small mechanism over a validation library (pydantic, attrs validators) because the configs must
stay plain frozen dataclasses — hashable static arguments of ``jax.jit`` and usable as pytree
metadata — and the whole mechanism is ~60 lines.

``from_dict(Cls, mapping)`` builds a (possibly nested) config and rejects, before any computation
starts: unknown keys (listing the allowed ones), values of the wrong type (naming the expected
type), and impossible values (re-raised with the full key path, e.g. ``sweep.cem.num_elites``). A
nested table is applied *over the parent's default* for that field, so a parent can give a shared
section its own defaults (the sweep's ``cem = CEMConfig(horizon=25, …)``) and a TOML table that
sets one key keeps the parent's other defaults. ``apply_overrides`` gives Hydra-style ``--set
a.b=value``; ``to_toml`` writes a resolved config back (tomli-w).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from mismatch_jax.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A config value is unknown, of the wrong type or impossible; the message names the key."""


def setting(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None,
            default_factory: Any = dataclasses.MISSING):
    """A config field whose numbers must satisfy the given bounds (``Schema`` checks them; tuples
    elementwise; None values are skipped)."""
    bounds = {name: value for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
              if value is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"bounds": bounds})


def _fmt(number) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


def _describe(bounds: dict) -> str:
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"in {low[0]}{_fmt(low[1])}, {_fmt(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {_fmt(low[1])}"
    return f"{'<=' if high[0] == ']' else '<'} {_fmt(high[1])}"


def _numbers(value) -> list:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, tuple):
        return [v for item in value for v in _numbers(item)]
    return []


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def check_fields(config: Any) -> None:
    """Raises ValueError naming ``Class.field`` when a number of ``config`` is NaN / ±inf or
    outside the bounds its ``setting`` declares."""
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        bounds = field.metadata.get("bounds", {})
        if hints.get(field.name) is int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ValueError(f"{type(config).__name__}.{field.name} must be an integer, got {value!r}")
        for number in _numbers(value):
            name = f"{type(config).__name__}.{field.name}"
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if (("ge" in bounds and not number >= bounds["ge"]) or ("gt" in bounds and not number > bounds["gt"])
                    or ("le" in bounds and not number <= bounds["le"])
                    or ("lt" in bounds and not number < bounds["lt"])):
                raise ValueError(f"{name} must be {_describe(bounds)}, got {value!r}")


class Schema:
    """Base of the package's frozen config dataclasses: field bounds (``setting``) and finite
    floats are checked at construction, then ``check()`` (override it for rules between
    fields; raise ValueError naming them)."""

    def __post_init__(self):
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Rules between fields (none by default)."""


def is_named_table(tp: Any) -> bool:
    """Whether ``tp`` is ``tuple[tuple[str, X], ...]``: a TOML table of free names (e.g. the
    env's physical constants) → values, kept as hashable (name, value) pairs in order."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is not tuple or len(args) != 2 or args[1] is not Ellipsis:
        return False
    inner = typing.get_args(args[0])
    return typing.get_origin(args[0]) is tuple and len(inner) == 2 and inner[0] is str


_TYPE_WORDS = {float: "a number", int: "an integer", str: "a string", bool: "true/false"}


def _type_name(tp: Any) -> str:
    if tp in _TYPE_WORDS:
        return _TYPE_WORDS[tp]
    if typing.get_origin(tp) is tuple:
        return "a list"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        present = [arg for arg in args if arg is not type(None)]
        if len(present) == 1:  # an optional field: its own error names the key inside it
            return _convert(value, present[0], path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple and is_named_table(tp) and isinstance(value, Mapping):
        value_type = typing.get_args(args[0])[1]
        return tuple((str(name), _convert(item, value_type, f"{path}.{name}")) for name, item in value.items())
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected a list of {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Builds dataclass ``cls`` from ``data``; missing keys take the field defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)  # resolves each base class in its own module
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(where + k for k in unknown)}; "
            f"allowed keys{' in ' + path if path else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in data:
            default = field.default
            if (dataclasses.is_dataclass(default) and isinstance(data[name], Mapping)
                    and dataclasses.is_dataclass(hints[name])):
                # A table over the parent's own default for this section (its keys win).
                base = {f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init}
                kwargs[name] = _convert({**_plain(base, set(data[name])), **data[name]}, hints[name], key_path)
            else:
                kwargs[name] = _convert(data[name], hints[name], key_path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key_path} ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def _plain(values: dict, given: set) -> dict:
    """Default values of a section as from_dict input (nested configs as tables, tuples as
    lists); keys the table gives are left out (the table's value wins)."""
    return {k: to_dict(v) for k, v in values.items() if k not in given}


def read_toml(path: str | Path) -> dict:
    """The parsed TOML file at ``path`` (``ConfigError`` if missing or not valid TOML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_toml(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Reads a TOML file into dataclass ``cls`` with strict validation; ``overrides`` are
    ``KEY=VALUE`` strings applied first (see ``apply_overrides``)."""
    return from_dict(cls, apply_overrides(read_toml(path), overrides))


def parse_override_value(text: str) -> Any:
    """A ``--set`` value: any TOML value (``3``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``), or
    the bare text as a string when it is not one (``--set env=pendulum``)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict:
    """``data`` (a parsed TOML mapping) with Hydra-style ``KEY=VALUE`` overrides applied, where
    KEY is a dotted path (``training.num_epochs=5``, ``datasets.pets.num_trials=2``). Tables on
    the path are created when missing; whether a key exists and its value fits is decided by
    ``from_dict`` afterwards, so a mistyped key fails there naming it. Returns a new dict."""
    import copy

    result = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, "
                              "e.g. --set training.num_epochs=5")
        parts = key.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {key}: {where} is a value, not a table")
            node = child
        node[parts[-1]] = parse_override_value(text.strip())
    return result


def to_dict(config: Any) -> dict:
    """Dataclass → plain dict (tuples as lists) suitable for JSON/TOML round-trips."""
    def convert(v):
        if dataclasses.is_dataclass(v):
            hints = _hints(type(v))
            return {f.name: (({name: convert(item) for name, item in getattr(v, f.name)})
                             if is_named_table(hints.get(f.name)) else convert(getattr(v, f.name)))
                    for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [convert(x) for x in v]
        return v
    return convert(config)


def to_toml(config: Any) -> str:
    """The config as TOML text (tomli-w), every default written out; None values (TOML has no
    null) are left out, which reads back as the same config since they are the defaults."""
    import tomli_w

    def drop_none(value):
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [drop_none(v) for v in value]
        return value

    return tomli_w.dumps(drop_none(to_dict(config)))
