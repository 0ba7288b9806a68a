"""Typed configuration: YAML recipes and ``key=value`` overrides built into dataclasses.

OmegaConf reads YAML, resolves ``${...}`` interpolation and applies dotted overrides; :func:`build`
then turns the plain data into the component's config dataclass, checking every key and value.
An unknown key is an error that lists the valid keys; a ``Literal`` field names its choices. A config
class derived from :class:`Shorthand` may be written as a bare number, which sets that field
(``orient: 0.01`` for ``orient: {weight: 0.01}``, :mod:`threed.regularizers`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from threed.errors import ThreedError

T = TypeVar("T")


class Shorthand:
    """Base of config dataclasses that a recipe may write as one number, which sets field ``SHORTHAND``."""

    SHORTHAND: ClassVar[str]


def _where(path: str) -> str:
    return f" at '{path}'" if path else ""


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check and convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = _kinds([a for a in args if a is not type(None)])
        if kinds is not None and isinstance(value, Mapping):
            kind = value.get("kind", next(iter(kinds)))
            if kind not in kinds:
                raise ThreedError(f"unknown kind {kind!r}{_where(path)}; choose one of: {', '.join(kinds)}")
            return build(kinds[kind], value, path)
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ThreedError as exc:
                errors.append(str(exc))
        raise ThreedError(errors[0] if len(errors) == 1 else f"invalid value {value!r}{_where(path)}: " + "; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ThreedError(f"invalid value {value!r}{_where(path)}; choose one of: {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if issubclass(tp, Shorthand) and isinstance(value, (int, float)) and not isinstance(value, bool):
            return build(tp, {tp.SHORTHAND: value}, path)
        return build(tp, value, path)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ThreedError(f"expected a list{_where(path)}, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ThreedError(f"expected {len(args)} values{_where(path)}, got {len(value)}: {value!r}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        seq = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ThreedError(f"expected a mapping{_where(path)}, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _coerce(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ThreedError(f"expected true/false{_where(path)}, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ThreedError(f"expected an integer{_where(path)}, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ThreedError(f"expected a number{_where(path)}, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ThreedError(f"expected a string{_where(path)}, got {value!r}")
        return str(value)
    return value


def _kinds(options: Sequence[Any]) -> dict[str, type] | None:
    """For a union of config dataclasses told apart by a ``kind: Literal[...]`` field: kind -> class."""
    table: dict[str, type] = {}
    for option in options:
        if not dataclasses.is_dataclass(option):
            return None
        hint = typing.get_type_hints(option).get("kind")
        if hint is None or typing.get_origin(hint) is not Literal:
            return None
        for k in typing.get_args(hint):
            table[k] = option
    return table


def build(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively.

    Raises :class:`ThreedError` naming the offending key path and, for unknown keys, the valid ones.
    """
    if data is None:
        data = {}
    if isinstance(data, (DictConfig, ListConfig)):
        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, Mapping):
        raise ThreedError(f"expected a mapping for {cls.__name__}{_where(path)}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{path}." if path else ""
        raise ThreedError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}; "
                          f"valid keys{_where(path)}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{path}.{name}" if path else name)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ThreedError(f"missing required key{'s' if len(missing) > 1 else ''}{_where(path)}: {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ThreedError(f"invalid {cls.__name__}{_where(path)}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML-friendly data; tuples become lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_overrides(items: Sequence[str]) -> DictConfig:
    """``["a.b=1", "model=/x"]`` -> a DictConfig; each item must be ``KEY=VALUE``."""
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ThreedError(f"override {item!r} is not KEY=VALUE (e.g. max_steps=200 or stages.0.steps=500)")
    try:
        return OmegaConf.from_dotlist(list(items))
    except Exception as exc:  # omegaconf raises several grammar error types
        raise ThreedError(f"cannot parse overrides {list(items)}: {exc}") from exc
