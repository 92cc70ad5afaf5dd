"""One source of truth for the config format: typed dataclasses annotated with :class:`F`.

A config section is a frozen dataclass whose YAML-visible fields are written
``name: Annotated[T, F("doc", unit=..., gt=...)] = default``. From those declarations

* :func:`convert` turns a parsed YAML value into the dataclass, collecting **every**
  error as ``(path, message)`` (unknown keys with a did-you-mean, wrong types, missing
  required fields, numeric bounds, enum choices), and
* :func:`schema_of` emits the matching JSON Schema (draft 2020-12), and
* :func:`restart_changes` lists the changed fields a reload cannot apply (``restart=True``).

Supported ``T``: ``str``, ``int``, ``float`` (ints accepted), ``bool``, a ``StrEnum``,
``X | None``, ``tuple[X, ...]`` (YAML list), ``Mapping[str, X]`` (YAML mapping),
``Any`` and nested section dataclasses. Fields without an ``F`` annotation are internal
(filled by the loader, never read from YAML) and must have defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

Errors = list[tuple[str, str]]

# patterns (F(pattern=...)) of the names the config declares
NAME = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"  # tier, backend and key names
HEADER = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # an HTTP header field name (RFC 9110 token)
ENV = r"[A-Za-z_][A-Za-z0-9_]*"  # an environment variable name


@dataclass(frozen=True, slots=True)
class F:
    """Documentation and constraints of one YAML field."""

    doc: str
    unit: str | None = None
    gt: float | None = None  # exclusive minimum
    ge: float | None = None  # inclusive minimum
    lt: float | None = None  # exclusive maximum
    le: float | None = None  # inclusive maximum
    min_items: int | None = None  # lists and mappings
    min_length: int | None = None  # strings
    pattern: str | None = None  # strings, regex (full match)
    key: str | None = None  # the YAML key when it differs from the attribute (``class``)
    derived: bool = False  # the real default is computed by the loader (schema shows none)
    restart: bool = False  # applied at start only: a reload that changes it warns (see restart_changes)

    def describe(self) -> str:
        text = f"{self.doc} [{self.unit}]" if self.unit else self.doc
        return f"{text} (applied at start: a reload only warns)" if self.restart else text


_BAD: Any = object()  # sentinel: this subtree had errors

# YAML scalars taken as they are: the test a value passes, and what the error says is wanted
_SCALARS: Mapping[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def suggest(word: str, options: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str  # the YAML key
    attr: str  # the dataclass attribute
    tp: Any
    meta: F
    required: bool
    default: Any  # the default value (``dataclasses.MISSING`` when required)


@cache
def fields_of(cls: type) -> tuple[FieldInfo, ...]:
    """The YAML-visible fields of a section dataclass, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: list[FieldInfo] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) is not typing.Annotated:
            continue
        base, *extras = typing.get_args(tp)
        meta = next((e for e in extras if isinstance(e, F)), None)
        if meta is None:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        key = meta.key or f.name
        out.append(FieldInfo(key, f.name, base, meta, default is dataclasses.MISSING, default))
    return tuple(out)


def _optional_inner(tp: Any) -> Any | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _check_bounds(value: Any, meta: F | None, path: str, errs: Errors) -> bool:
    if meta is None:
        return True
    ok = True
    if isinstance(value, int | float) and not isinstance(value, bool):
        for bound, op, text in (
            (meta.gt, float.__gt__, ">"),
            (meta.ge, float.__ge__, ">="),
            (meta.lt, float.__lt__, "<"),
            (meta.le, float.__le__, "<="),
        ):
            if bound is not None and not op(float(value), float(bound)):
                errs.append((path, f"must be {text} {_num(bound)}, got {_num(value)}"))
                ok = False
    if isinstance(value, str):
        if meta.min_length is not None and len(value) < meta.min_length:
            errs.append((path, "must not be empty" if meta.min_length == 1 else "is too short"))
            ok = False
        elif meta.pattern is not None and not re.fullmatch(meta.pattern, value):
            errs.append((path, f"must match {meta.pattern}, got {value!r}"))
            ok = False
    if isinstance(value, tuple | Mapping) and meta.min_items is not None and len(value) < meta.min_items:
        errs.append((path, f"must have at least {meta.min_items} item{'s' if meta.min_items > 1 else ''}"))
        ok = False
    return ok


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def convert(tp: Any, raw: Any, path: str, errs: Errors, meta: F | None = None) -> Any:
    """Convert ``raw`` (parsed YAML) to ``tp``; append errors and return ``_BAD`` on failure."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if raw is None else convert(inner, raw, path, errs, meta)
    value = _convert_plain(tp, raw, path, errs)
    if value is _BAD:
        return _BAD
    return value if _check_bounds(value, meta, path, errs) else _BAD


def _convert_plain(tp: Any, raw: Any, path: str, errs: Errors) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return raw
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return convert_section(tp, raw, path, errs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        options = [str(m.value) for m in tp]
        if isinstance(raw, str) and raw in options:
            return tp(raw)
        hint = suggest(raw, options) if isinstance(raw, str) else ""
        errs.append((path, f"must be one of {', '.join(options)}, got {raw!r}{hint}"))
        return _BAD
    scalar = _SCALARS.get(tp) if isinstance(tp, type) else None
    if scalar is not None:
        fits, wanted = scalar
        if fits(raw):
            return raw
        errs.append((path, f"must be {wanted}, got {type_name(raw)} {raw!r}"))
        return _BAD
    if tp is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            if math.isfinite(raw):
                return float(raw)
            errs.append((path, f"must be a finite number, got {raw!r}"))
            return _BAD
        errs.append((path, f"must be a number, got {type_name(raw)} {raw!r}"))
        return _BAD
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(raw, list):
            errs.append((path, f"must be a list, got {type_name(raw)}"))
            return _BAD
        items = [convert(item_tp, x, join(path, i), errs) for i, x in enumerate(raw)]
        return _BAD if any(x is _BAD for x in items) else tuple(items)
    if origin in (Mapping, dict, typing.Mapping):
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(raw, Mapping):
            errs.append((path, f"must be a mapping, got {type_name(raw)}"))
            return _BAD
        out: dict[str, Any] = {}
        bad = False
        for k, v in raw.items():
            if not isinstance(k, str):
                errs.append((join(path, str(k)), f"key must be a string, got {type_name(k)}"))
                bad = True
                continue
            out[k] = convert(val_tp, v, join(path, k), errs)
            bad = bad or out[k] is _BAD
        return _BAD if bad else MappingProxyType(out)
    raise TypeError(f"unsupported config field type {tp!r} at {path}")  # a bug in the declarations


def convert_section(cls: type, raw: Any, path: str, errs: Errors) -> Any:
    """Convert a mapping to the section dataclass ``cls``, checking every key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        errs.append((path, f"must be a mapping, got {type_name(raw)}"))
        return _BAD
    infos = fields_of(cls)
    names = [fi.name for fi in infos]
    before = len(errs)
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    for key in raw:
        if key not in names:
            hint = renamed.get(str(key))
            errs.append((join(path, str(key)), hint or f"unknown key{suggest(str(key), names)}"))
    kwargs: dict[str, Any] = {}
    for fi in infos:
        if fi.name in raw:
            kwargs[fi.attr] = convert(fi.tp, raw[fi.name], join(path, fi.name), errs, fi.meta)
        elif fi.required:
            errs.append((join(path, fi.name), "required field is missing"))
    if len(errs) > before:
        return _BAD
    return cls(**kwargs)


def restart_changes(old: Any, new: Any, path: str = "") -> list[str]:
    """The paths (``server.port``, ``autoscale``) of the fields declared ``restart=True``
    whose value differs between two values of one section dataclass, in declaration
    order. Sections are searched recursively; a ``restart`` section compares as a whole."""
    out: list[str] = []
    section: type = type(old)
    for fi in fields_of(section):
        a, b = getattr(old, fi.attr), getattr(new, fi.attr)
        here = join(path, fi.name)
        if fi.meta.restart:
            if a != b:
                out.append(here)
        elif dataclasses.is_dataclass(fi.tp) and isinstance(fi.tp, type):
            out += restart_changes(a, b, here)
    return out


_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def position(raw: Any, path: str) -> tuple[int, ...]:
    """Where ``path`` sits in the parsed document (for listing errors in file order):
    the index of each step among its siblings; unknown steps sort last."""
    out: list[int] = []
    node = raw
    for m in _STEP.finditer(path):
        key, idx = m.group(1), m.group(2)
        if idx is not None and isinstance(node, list) and int(idx) < len(node):
            out.append(int(idx))
            node = node[int(idx)]
        elif key is not None and isinstance(node, Mapping) and key in node:
            out.append(list(node).index(key))
            node = node[key]
        else:
            out.append(1 << 30)
            break
    return tuple(out)


# --------------------------------------------------------------------------- schema


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_json_default(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json_default(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {fi.name: _json_default(getattr(value, fi.attr)) for fi in fields_of(type(value))}
    return value


def schema_of(tp: Any, meta: F | None = None) -> dict[str, Any]:
    """The JSON Schema fragment for ``tp`` (with ``meta``'s bounds and description)."""
    inner = _optional_inner(tp)
    if inner is not None:
        some = schema_of(inner, meta)
        some.pop("description", None)
        s: dict[str, Any] = {"anyOf": [some, {"type": "null"}]}
    else:
        s = _schema_plain(tp)
        if meta is not None:
            for key, bound in (
                ("exclusiveMinimum", meta.gt),
                ("minimum", meta.ge),
                ("exclusiveMaximum", meta.lt),
                ("maximum", meta.le),
            ):
                if bound is not None:
                    s[key] = bound
            if meta.min_items is not None:
                s["minItems" if s.get("type") == "array" else "minProperties"] = meta.min_items
            if meta.min_length is not None:
                s["minLength"] = meta.min_length
            if meta.pattern is not None:
                s["pattern"] = f"^(?:{meta.pattern})$"
    if meta is not None:
        s = {"description": meta.describe(), **s}
    return s


def _schema_plain(tp: Any) -> dict[str, Any]:
    if tp is Any:
        return {}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        props: dict[str, Any] = {}
        required: list[str] = []
        for fi in fields_of(tp):
            p = schema_of(fi.tp, fi.meta)
            if fi.required:
                required.append(fi.name)
            elif not fi.meta.derived:
                p["default"] = _json_default(fi.default)
            props[fi.name] = p
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if tp.__doc__:
            out["description"] = " ".join(tp.__doc__.split())
        if required:
            out["required"] = required
        return out
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    origin = typing.get_origin(tp)
    if origin is tuple:
        return {"type": "array", "items": schema_of(typing.get_args(tp)[0])}
    if origin in (Mapping, dict, typing.Mapping):
        return {"type": "object", "additionalProperties": schema_of(typing.get_args(tp)[1])}
    raise TypeError(f"unsupported config field type {tp!r}")
