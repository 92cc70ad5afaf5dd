"""What a backend's first tokens take beyond the step model, learned per backend.

Each observed time to first token (from dispatch) minus
:func:`~slorouter.models.static.first_token_base` at the load the request was placed at
is one point ``(running, excess)``. Points go to a bucket by load — ``running`` 0, 1,
2–3, 4–7, 8–15, … (powers of two) — each a decayed mean (half-life of the step model,
counted from that bucket's own last point, so what was learned at a load stays until
that load is seen again); all pulled to 0 alike with the weight of ``prior_weight``
requests against the decayed count of all of them. The
excess at a load is read off the curve through the buckets' ``(mean running, mean
excess)`` points (:meth:`EngineLimits.ttft_extra`), never negative.

Why buckets and not one line: the excess is convex in the load (on the e2e tests' CPU
vLLM servers ≈ 140 ms at 0 running, over a second at 7), and a line fitted on decayed
sums follows the newest load: after a run at 8 streams it predicted 360 ms + 130 ms per
running sequence — 490 ms at one, where 175 ms was measured — and the policies deferred
every tight request for a TTFT they would have met.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from slorouter.models.saved import StateError, age, field, num, section
from slorouter.models.static import EngineLimits

STATE_VERSION = 2


def bucket_of(running: int) -> int:
    """0 for 0 running, 1 for 1, 2 for 2–3, 3 for 4–7, …"""
    return running.bit_length() if running > 0 else 0


class _Bucket:
    __slots__ = ("n", "stamp", "sum_x", "sum_y")

    def __init__(self, stamp: float, n: float = 0.0, sum_x: float = 0.0, sum_y: float = 0.0) -> None:
        self.n = n
        self.sum_x = sum_x
        self.sum_y = sum_y
        self.stamp = stamp


class TtftExcess:
    __slots__ = ("buckets", "n", "stamp", "xs", "ys")

    def __init__(self, now: float) -> None:
        self.buckets: dict[int, _Bucket] = {}
        self.n = 0.0  # decayed requests over all buckets (for reports)
        self.stamp = now
        self.xs: tuple[float, ...] = ()  # the curve (derived from the buckets)
        self.ys: tuple[float, ...] = ()

    def observe(
        self, running: int, excess_s: float, now: float, half_life_s: float, prior_weight: float
    ) -> None:
        k = bucket_of(running)
        b = self.buckets.get(k)
        if b is None:
            b = self.buckets[k] = _Bucket(now)
        f = 0.5 ** ((now - b.stamp) / half_life_s)
        b.stamp = now
        b.n = b.n * f + 1.0
        b.sum_x = b.sum_x * f + float(running)
        b.sum_y = b.sum_y * f + excess_s
        g = 0.5 ** ((now - self.stamp) / half_life_s)
        self.n = self.n * g + 1.0
        self.stamp = now
        self._fit(prior_weight)

    def _fit(self, prior_weight: float) -> None:
        total = sum(b.n for b in self.buckets.values())
        shrink = total / (total + prior_weight) if total > 0 else 0.0
        pts = sorted((b.sum_x / b.n, shrink * b.sum_y / b.n) for b in self.buckets.values() if b.n > 0)
        self.xs = tuple(x for x, _ in pts)
        self.ys = tuple(y for _, y in pts)

    def limits(self, base: EngineLimits) -> EngineLimits:
        """``base`` with the learned excess (``base`` itself until something was observed)."""
        return base if not self.xs else replace(base, ttft_xs=self.xs, ttft_ys=self.ys)

    def describe(self) -> dict[str, Any]:
        return {"points": [[x, y] for x, y in zip(self.xs, self.ys, strict=True)], "requests": self.n}

    def to_state(self, now: float) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "requests": self.n,
            "age_s": now - self.stamp,
            "buckets": [
                {"requests": b.n, "sum_running": b.sum_x, "sum_excess_s": b.sum_y, "age_s": now - b.stamp}
                for _, b in sorted(self.buckets.items())
            ],
        }

    @classmethod
    def from_state(cls, raw: Any, now: float, where: str, prior_weight: float) -> TtftExcess:
        if isinstance(raw, dict) and raw.get("v") == 1:  # one line's sums: one bucket at their mean load
            return cls._from_v1(raw, now, where, prior_weight)
        sec = section(raw, where, STATE_VERSION)
        out = cls(age(sec, where, now))
        out.n = num(field(sec, "requests", where), f"{where}.requests", 0.0)
        rows = field(sec, "buckets", where)
        if not isinstance(rows, list):
            raise StateError(f"{where}.buckets: must be a list")
        for i, row in enumerate(rows):
            w = f"{where}.buckets[{i}]"
            if not isinstance(row, dict):
                raise StateError(f"{w}: must be an object")
            b = _Bucket(
                age(row, w, now),
                num(field(row, "requests", w), f"{w}.requests", 0.0),
                num(field(row, "sum_running", w), f"{w}.sum_running", 0.0),
                num(field(row, "sum_excess_s", w), f"{w}.sum_excess_s"),
            )
            if b.n > 0.0:
                out.buckets[bucket_of(round(b.sum_x / b.n))] = b
        out._fit(prior_weight)
        return out

    @classmethod
    def _from_v1(cls, sec: dict[str, Any], now: float, where: str, prior_weight: float) -> TtftExcess:
        out = cls(age(sec, where, now))
        n = num(field(sec, "requests", where), f"{where}.requests", 0.0)
        sx = num(field(sec, "sum_running", where), f"{where}.sum_running", 0.0)
        sy = num(field(sec, "sum_excess_s", where), f"{where}.sum_excess_s")
        if n > 0.0:
            out.n = n
            out.buckets[bucket_of(round(sx / n))] = _Bucket(out.stamp, n, sx, sy)
            out._fit(prior_weight)
        return out
