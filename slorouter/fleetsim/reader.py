"""Reading one YAML mapping of a scenario file: typed fields with bounds, unknown keys,
every mistake collected as ``(path, message)`` (:mod:`slorouter.fleetsim.scenario`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Reader:
    """Reads one mapping, collecting (path, message) errors."""

    def __init__(self, raw: Any, path: str, errs: list[tuple[str, str]]) -> None:
        self.path, self.errs = path, errs
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            errs.append((path, "must be a mapping"))
            raw = {}
        self.raw: Mapping[str, Any] = raw
        self.seen: set[str] = set()

    def at(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def get(self, k: str) -> Any:
        self.seen.add(k)
        return self.raw.get(k)

    def num(self, k: str, default: float | None, gt: float | None = None, ge: float | None = None) -> Any:
        v = self.get(k)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.errs.append((self.at(k), f"must be a number, got {v!r}"))
            return default
        if gt is not None and not v > gt:
            self.errs.append((self.at(k), f"must be > {gt:g}"))
        if ge is not None and not v >= ge:
            self.errs.append((self.at(k), f"must be >= {ge:g}"))
        return v

    def int_(self, k: str, default: int | None, ge: int = 0) -> Any:
        v = self.get(k)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self.errs.append((self.at(k), f"must be an integer, got {v!r}"))
            return default
        if v < ge:
            self.errs.append((self.at(k), f"must be >= {ge}"))
        return v

    def str_(self, k: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        v = self.get(k)
        if v is None:
            return default
        if not isinstance(v, str) or (choices is not None and v not in choices):
            want = f"one of {', '.join(choices)}" if choices else "a string"
            self.errs.append((self.at(k), f"must be {want}, got {v!r}"))
            return default
        return v

    def done(self) -> None:
        for k in self.raw:
            if k not in self.seen:
                self.errs.append((self.at(str(k)), "unknown key"))
