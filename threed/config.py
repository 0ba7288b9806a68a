"""Typed configuration: YAML recipes and ``key=value`` overrides built into dataclasses.

OmegaConf reads YAML, resolves ``${...}`` interpolation and applies dotted overrides; :func:`build`
then turns the plain data into the component's config dataclass, checking every key and value.
An unknown key is an error that lists the valid keys; a ``Literal`` field names its choices. A config
class derived from :class:`Shorthand` may be written as a bare number, which sets that field
(``orient: 0.01`` for ``orient: {weight: 0.01}``, :mod:`threed.regularizers`).

Plug-ins (guidance rules, ...) register their config class in a :class:`Registry`; a field annotated
``Annotated[Base, registry]`` is built from a mapping by its ``kind``, so adding a plug-in never means
editing a union of config classes here or in the component that holds the field.

An empty value (``key=`` on a command line, where the shell has already eaten the quotes of ``key=""``;
``key:`` or ``key: null`` in YAML) is null to OmegaConf. :func:`build` reads it by the field's type: a
field that may be null takes null (``image=`` drops the image, ``max_steps=`` lifts the cap); a text
field that may not takes the empty string (``stages.0.guidance.negative_prompt=`` is no negative prompt);
any other field refuses it, saying what to give. Errors about text show the shell quoting that keeps
a value text (``'key="true"'``).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from threed.errors import ThreedError

T = TypeVar("T")


class Shorthand:
    """Base of config dataclasses that a recipe may write as one number, which sets field ``SHORTHAND``."""

    SHORTHAND: ClassVar[str]


def _where(path: str) -> str:
    return f" at '{path}'" if path else ""


class Registry:
    """Plug-ins of one family: ``kind`` -> config class -> implementation, filled by the plug-ins themselves.

    A plug-in module calls :meth:`register` with its config dataclass (whose ``kind`` field is a one-value
    ``Literal`` defaulting to that value) and its implementation. ``package`` names the package that holds
    the plug-in modules; every module in it is imported before the first lookup, so a plug-in is one new
    file there. A config field annotated ``Annotated[Base, registry]`` (or a list of them) is built by
    :func:`build` from a mapping through its ``kind``, ``default`` when the mapping has none.
    """

    def __init__(self, name: str, default: str, package: str):
        self.name = name
        self.default = default
        self.package = package
        self._configs: dict[str, type] = {}
        self._impls: dict[type, Any] = {}
        self._loaded = False

    def register(self, config: type, impl: Any) -> None:
        """Add a plug-in: ``config``'s ``kind`` default names it; ``impl`` is what :meth:`implementation` returns."""
        field = next((f for f in dataclasses.fields(config) if f.name == "kind"), None)
        hint = typing.get_type_hints(config).get("kind")
        if field is None or typing.get_origin(hint) is not Literal or typing.get_args(hint) != (field.default,):
            raise TypeError(f"{config.__name__} needs a field kind: Literal['<name>'] = '<name>' to join the "
                            f"{self.name} registry")
        kind = field.default
        if self._configs.get(kind, config) is not config:
            raise TypeError(f"{self.name} kind {kind!r} is registered twice ({self._configs[kind].__name__}, "
                            f"{config.__name__})")
        self._configs[kind] = config
        self._impls[config] = impl

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self.package)
            for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
                importlib.import_module(f"{self.package}.{module}")

    def kinds(self) -> list[str]:
        """Every registered kind, sorted."""
        self._load()
        return sorted(self._configs)

    def config(self, kind: str, path: str = "") -> type:
        """The config class of ``kind``; an unknown kind is a :class:`ThreedError` naming the known ones."""
        self._load()
        if kind not in self._configs:
            raise ThreedError(f"unknown {self.name} kind {kind!r}{_where(path)}; choose one of: "
                              f"{', '.join(self.kinds())}")
        return self._configs[kind]

    def implementation(self, config: Any) -> Any:
        """What the plug-in of ``config``'s class registered."""
        self._load()
        impl = self._impls.get(type(config))
        if impl is None:
            raise ThreedError(f"no {self.name} plug-in for {type(config).__name__}; known kinds: "
                              f"{', '.join(self.kinds())}")
        return impl


def _registry(tp: Any) -> tuple[type, Registry] | None:
    """(base class, registry) of an ``Annotated[Base, registry]`` type, else None."""
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        for extra in extras:
            if isinstance(extra, Registry):
                return base, extra
    return None


def _key(path: str) -> str:
    """``stages[0].steps`` as it is typed in an override: ``stages.0.steps``."""
    return re.sub(r"\[(\d+)\]", r".\1", path) if path else "KEY"


def _expected(tp: Any) -> str:
    """What a field of type ``tp`` takes, in words."""
    if (plugin := _registry(tp)) is not None:
        return f"a mapping with a kind ({', '.join(plugin[1].kinds())})"
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _expected(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        kinds = _kinds(options)
        return f"a mapping with a kind ({', '.join(kinds)})" if kinds else " or ".join(map(_expected, options))
    if origin is Literal:
        return "one of: " + ", ".join(map(str, typing.get_args(tp)))
    if dataclasses.is_dataclass(tp) or origin in (dict, Mapping):
        return "a mapping"
    if origin in (tuple, list, Sequence):
        return "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _empty(tp: Any, path: str) -> ThreedError:
    key = _key(path)
    return ThreedError(f"{key} has no value (nothing after '{key}=', or null in YAML), but it needs {_expected(tp)}: "
                       f"give one, or leave {key} out to keep the recipe's")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check and convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if (plugin := _registry(tp)) is not None:
        base, registry = plugin
        if isinstance(value, base):
            return value
        if value is None:
            raise _empty(tp, path)
        if not isinstance(value, Mapping):
            raise ThreedError(f"expected a mapping with a kind{_where(path)}, got {value!r}")
        return build(registry.config(value.get("kind", registry.default), path), value, path)
    if origin is Annotated:
        return _coerce(typing.get_args(tp)[0], value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if value is None:
            if str in args:
                return ""
            raise _empty(tp, path)
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
    if value is None:
        if tp is str:
            return ""
        raise _empty(tp, path)
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
        if isinstance(value, Mapping) and args and _registry(args[0]) is not None:
            value = [value]  # one plug-in where a list of them is expected: a list of one
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
            text = str(value).lower() if isinstance(value, bool) else "..."
            raise ThreedError(f"expected a string{_where(path)}, got {value!r}: to keep a value text on a command "
                              f"line, quote it inside the shell's quotes, e.g. '{_key(path)}=\"{text}\"'")
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
    hints = typing.get_type_hints(cls, include_extras=True)
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


def parse_overrides(items: Sequence[str] | Mapping[str, Any]) -> DictConfig:
    """``["a.b=1", "model=/x"]`` (the command line's) or ``{"a.b": 1, "model": "/x"}`` (the Python API's,
    values as Python objects) -> a DictConfig; each item must be ``KEY=VALUE``."""
    if isinstance(items, Mapping):
        conf = OmegaConf.create()
        for key, value in items.items():
            if not isinstance(key, str) or not key.strip(".") or ".." in key:
                raise ThreedError(f"override key {key!r} is not a dotted name (e.g. max_steps or stages.0.steps)")
            try:
                OmegaConf.update(conf, key, value, merge=True)
            except Exception as exc:  # omegaconf raises several error types, e.g. for a value it cannot hold
                raise ThreedError(f"cannot use override {key}={value!r}: {exc}") from exc
        return conf
    if isinstance(items, str):
        raise ThreedError(f"overrides are a list of KEY=VALUE items or a mapping, not the string {items!r}")
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ThreedError(f"override {item!r} is not KEY=VALUE (e.g. max_steps=200 or stages.0.steps=500)")
    try:
        return OmegaConf.from_dotlist(list(items))
    except Exception as exc:  # omegaconf raises several grammar error types
        raise ThreedError(f"cannot parse overrides {list(items)}: {exc}") from exc
