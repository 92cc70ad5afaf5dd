"""What a backend's first tokens take beyond the step model, learned per backend.

Each observed time to first token (from dispatch) minus
:func:`~slorouter.models.static.first_token_base` at the load the request was placed at
is one point ``(running, excess)``; the excess is fitted as ``a + b·running`` on decayed
sums (half-life of the step model) by :func:`~slorouter.models.latency.fit.line_fit`:
both coefficients pulled to 0 with the weight of ``prior_weight`` requests, ``b ≥ 0``.
What the fit adds to a prediction is never negative (:meth:`EngineLimits.ttft_extra`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from slorouter.models.latency.fit import line_fit
from slorouter.models.saved import age, field, num, section
from slorouter.models.static import EngineLimits

STATE_VERSION = 1


class TtftExcess:
    __slots__ = ("a_s", "b_s", "n", "stamp", "sum_x", "sum_xx", "sum_xy", "sum_y")

    def __init__(self, now: float) -> None:
        # decayed sums over requests: x = running at dispatch, y = excess seconds
        self.n = 0.0
        self.sum_x = 0.0
        self.sum_xx = 0.0
        self.sum_y = 0.0
        self.sum_xy = 0.0
        self.stamp = now
        self.a_s = 0.0  # the fit (derived from the sums)
        self.b_s = 0.0

    def observe(
        self, running: int, excess_s: float, now: float, half_life_s: float, prior_weight: float
    ) -> None:
        f = 0.5 ** ((now - self.stamp) / half_life_s)
        self.stamp = now
        x = float(running)
        self.n = self.n * f + 1.0
        self.sum_x = self.sum_x * f + x
        self.sum_xx = self.sum_xx * f + x * x
        self.sum_y = self.sum_y * f + excess_s
        self.sum_xy = self.sum_xy * f + x * excess_s
        self._fit(prior_weight)

    def _fit(self, prior_weight: float) -> None:
        self.a_s, self.b_s = line_fit(self.n, self.sum_x, self.sum_xx, self.sum_y, self.sum_xy, prior_weight)

    def limits(self, base: EngineLimits) -> EngineLimits:
        """``base`` with the learned excess (``base`` itself until something was observed)."""
        return base if self.n <= 0.0 else replace(base, ttft_a_s=self.a_s, ttft_b_s=self.b_s)

    def to_state(self, now: float) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "requests": self.n,
            "sum_running": self.sum_x,
            "sum_running_sq": self.sum_xx,
            "sum_excess_s": self.sum_y,
            "sum_running_excess_s": self.sum_xy,
            "age_s": now - self.stamp,
        }

    @classmethod
    def from_state(cls, raw: Any, now: float, where: str, prior_weight: float) -> TtftExcess:
        sec = section(raw, where, STATE_VERSION)

        def get(name: str, lo: float | None = None) -> float:
            return num(field(sec, name, where), f"{where}.{name}", lo)

        out = cls(age(sec, where, now))
        out.n = get("requests", 0.0)
        out.sum_x = get("sum_running", 0.0)
        out.sum_xx = get("sum_running_sq", 0.0)
        out.sum_y = get("sum_excess_s")
        out.sum_xy = get("sum_running_excess_s")
        if out.n > 0.0:
            out._fit(prior_weight)
        return out
