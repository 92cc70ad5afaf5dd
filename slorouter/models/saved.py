"""The saved state of the models' parts: what every ``to_state`` / ``from_state`` shares.

Each learning part of a model (a digest, the pace fit, the load buckets, …) owns an
explicit ``to_state(now)``: a plain dict of JSON types (numbers, strings, lists,
objects) carrying its own version ``"v"``; and a ``from_state(raw, now, where, …)`` that
checks everything and builds a *new* part, or raises :class:`StateError` saying where
in the data (``where``, e.g. ``latency.backends.e0.fit.xty``) and what is wrong. Clock
times are saved as ages (``now - stamp``; clocks are monotonic per process) and come
back relative to the loading process's ``now``. What comes from the config (priors,
settings) and what is derived from saved values is not saved.
:mod:`slorouter.models.persist` composes the models' states into the state file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class StateError(ValueError):
    """Saved state this router cannot use; the message says where and why."""


def section(raw: Any, where: str, version: int) -> Mapping[str, Any]:
    """``raw`` as an object of the given version."""
    if not isinstance(raw, Mapping):
        raise StateError(f"{where}: must be an object")
    v = raw.get("v")
    if v != version:
        raise StateError(f"{where}: version {v!r}, this router reads version {version}")
    return raw


def field(raw: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in raw:
        raise StateError(f"{where}.{name}: missing")
    return raw[name]


def num(raw: Any, where: str, lo: float | None = None) -> float:
    """A finite number (``>= lo`` when given)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise StateError(f"{where}: must be a finite number")
    if lo is not None and raw < lo:
        raise StateError(f"{where}: must be >= {lo}")
    return float(raw)


def count(raw: Any, where: str) -> int:
    """A whole number ``>= 0``."""
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise StateError(f"{where}: must be a whole number >= 0")
    return raw


def nums(raw: Any, where: str, n: int) -> list[float]:
    """A list of exactly ``n`` finite numbers."""
    if not isinstance(raw, list) or len(raw) != n:
        raise StateError(f"{where}: must be a list of {n} numbers")
    return [num(x, f"{where}[{i}]") for i, x in enumerate(raw)]


def age(raw: Mapping[str, Any], where: str, now: float, name: str = "age_s") -> float:
    """The clock time ``now - raw[name]`` (a saved age, in seconds, >= 0)."""
    return now - num(field(raw, name, where), f"{where}.{name}", 0.0)
