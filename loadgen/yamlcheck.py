"""Reading YAML files, and small typed accessors over parsed YAML, that raise
path-qualified :class:`WorkloadError`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from loadgen.errors import WorkloadError


def read_yaml(path: Path, what: str) -> object:
    """The parsed contents of a YAML file (``what`` names it in the error: "the workload")."""
    file = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise WorkloadError(file, "", f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkloadError(file, "", f"not valid YAML: {exc}") from None


class Node:
    """A mapping read from YAML, with its file name and its path for error messages."""

    def __init__(self, file: str, path: str, data: object) -> None:
        if not isinstance(data, dict):
            raise WorkloadError(file, path or "(top level)", f"must be a mapping, got {_kind(data)}")
        self.file = file
        self.path = path
        self.data: dict[str, Any] = data

    def fail(self, key: str, message: str) -> WorkloadError:
        return WorkloadError(self.file, self.sub(key), message)

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(str(key), f"unknown key (known keys: {known})")

    def node(self, key: str) -> Node:
        return Node(self.file, self.sub(key), self.data.get(key))

    def opt_node(self, key: str) -> Node | None:
        return self.node(key) if self.has(key) else None

    def nodes(self, key: str) -> list[Node]:
        raw = self.data.get(key)
        if not isinstance(raw, list) or not raw:
            raise self.fail(key, f"must be a non-empty list, got {_kind(raw)}")
        return [Node(self.file, f"{self.sub(key)}[{i}]", item) for i, item in enumerate(raw)]

    def str_(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        raw = self.data.get(key, default)
        if raw is None:
            raise self.fail(key, "is required")
        if not isinstance(raw, str) or not raw:
            raise self.fail(key, f"must be a non-empty string, got {_kind(raw)}")
        if choices and raw not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    def opt_str(self, key: str) -> str | None:
        return self.str_(key) if self.has(key) else None

    def num(
        self,
        key: str,
        default: float | None = None,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
    ) -> float:
        raw = self.data.get(key, default)
        if raw is None:
            raise self.fail(key, "is required")
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise self.fail(key, f"must be a number, got {_kind(raw)}")
        value = float(raw)
        if gt is not None and not value > gt:
            raise self.fail(key, f"must be > {_fmt(gt)}, got {_fmt(value)}")
        if ge is not None and not value >= ge:
            raise self.fail(key, f"must be >= {_fmt(ge)}, got {_fmt(value)}")
        if le is not None and not value <= le:
            raise self.fail(key, f"must be <= {_fmt(le)}, got {_fmt(value)}")
        return value

    def opt_num(self, key: str, *, gt: float | None = None, ge: float | None = None) -> float | None:
        return self.num(key, gt=gt, ge=ge) if self.has(key) else None

    def int_(self, key: str, default: int | None = None, *, ge: int | None = None) -> int:
        raw = self.data.get(key, default)
        if raw is None:
            raise self.fail(key, "is required")
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.fail(key, f"must be an integer, got {_kind(raw)}")
        if ge is not None and raw < ge:
            raise self.fail(key, f"must be >= {ge}, got {raw}")
        return raw

    def opt_int(self, key: str, *, ge: int | None = None) -> int | None:
        return self.int_(key, ge=ge) if self.has(key) else None

    def bool_(self, key: str, default: bool) -> bool:
        raw = self.data.get(key, default)
        if not isinstance(raw, bool):
            raise self.fail(key, f"must be true or false, got {_kind(raw)}")
        return raw

    def str_map(self, key: str) -> dict[str, str]:
        raw = self.data.get(key) or {}
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a mapping, got {_kind(raw)}")
        out: dict[str, str] = {}
        for k, v in raw.items():
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                raise WorkloadError(self.file, f"{self.sub(key)}.{k}", f"must be a string, got {_kind(v)}")
            out[str(k)] = str(v)
        return out


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)
