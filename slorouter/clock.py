"""Injected time. Every component that needs "now" takes a :class:`Clock`.

The live proxy uses :class:`RealClock` (monotonic seconds); tests and the offline
fleet simulator use :class:`ManualClock`, advanced explicitly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (origin unspecified)."""
        ...


class RealClock:
    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    __slots__ = ("_t",)

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def advance(self, dt: float) -> None:
        if dt < 0:
            raise ValueError("a clock never goes backwards")
        self._t += dt

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError("a clock never goes backwards")
        self._t = t
