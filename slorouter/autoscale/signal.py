"""The per-tier signal of the scaler (pure; time is passed in).

* :class:`RateForecast` — a tier's arrival rate and its trend (Holt's linear exponential
  smoothing in continuous time: irregular ticks are fine), and the forecast one
  provisioning delay ahead. The scaler sizes for ``max(level, level + trend · delay)``:
  a rising rate is met when the servers asked for now arrive; a falling one is never
  anticipated (servers are given back only once they are empty).
* :class:`LengthStats` — decaying means of a tier's prompt and output lengths and of the
  time-weighted context ``x̄ = E[n·(p + n/2)] / E[n]`` of a decode slot: the inputs of the
  fluid cost (:mod:`slorouter.models.fluid`).
* :class:`Attainment` — the share of a tier's finished requests that met their SLO over a
  sliding window (the gauge an operator watches next to the scaling decisions).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from slorouter.models.fluid import Lengths

_LN2: Final = math.log(2.0)


def decay(dt: float, half_life_s: float) -> float:
    """The weight left after ``dt`` seconds with the given half-life (1 for ``dt <= 0``)."""
    if dt <= 0.0:
        return 1.0
    return math.exp(-_LN2 * dt / half_life_s)


class RateForecast:
    """Arrival rate (requests/s) of one tier: a level and a trend (Holt).

    Each :meth:`update` brings the arrivals counted since the previous one (the first
    only starts the clock, unless :meth:`start` did). For one level half-life after the
    start the level is the mean rate since the start (no slow climb from zero, no single
    short interval taken for the rate); from then on it follows the observed rate with
    half-life ``level_half_life_s``, and the trend (the level's slope, half-life
    ``trend_half_life_s``) is learned. The forecast uses the trend only once it has been
    learned for one trend half-life."""

    __slots__ = ("_h_level", "_h_trend", "_last", "_seen", "_started", "level", "trend")

    def __init__(self, level_half_life_s: float, trend_half_life_s: float) -> None:
        if level_half_life_s <= 0 or trend_half_life_s <= 0:
            raise ValueError("half-lives must be > 0")
        self._h_level = level_half_life_s
        self._h_trend = trend_half_life_s
        self.level = 0.0
        self.trend = 0.0  # requests/s per second
        self._last: float | None = None
        self._started: float | None = None
        self._seen = 0  # arrivals during the warm-up

    def start(self, now: float) -> None:
        """Start the clock (arrivals of the first :meth:`update` count from here)."""
        if self._last is None:
            self._last = self._started = now

    def _warm(self, now: float) -> bool:
        return self._started is not None and now - self._started >= self._h_level

    def update(self, arrivals: int, now: float) -> None:
        if self._last is None or self._started is None:
            self.start(now)
            return
        dt = now - self._last
        if dt <= 0.0:
            return
        self._last = now
        if not self._warm(now):
            self._seen += arrivals
            self.level = self._seen / (now - self._started)
            return
        keep = decay(dt, self._h_level)
        predicted = self.level + self.trend * dt
        level = keep * predicted + (1.0 - keep) * arrivals / dt
        keep_t = decay(dt, self._h_trend)
        self.trend = keep_t * self.trend + (1.0 - keep_t) * (level - self.level) / dt
        self.level = max(0.0, level)

    def resume(self, level: float, trend: float, age_s: float, now: float) -> None:
        """Continue from another process's rate (a new leader taking over the scaler):
        its level and trend, learned for ``age_s``; arrivals count from ``now``."""
        self.level, self.trend = max(0.0, level), trend
        self._started = now - max(0.0, age_s)
        self._last = now
        self._seen = round(self.level * max(0.0, age_s))

    def skip(self, now: float) -> None:
        """Arrivals before ``now`` are not counted: the next interval starts here."""
        if self._last is not None:
            self._last = max(self._last, now)

    def age(self, now: float) -> float:
        """Seconds since the rate's clock started (0: not started)."""
        return 0.0 if self._started is None else now - self._started

    def forecast(self, horizon_s: float, now: float) -> float:
        """The rate expected ``horizon_s`` from now (never below 0); the level alone
        while the trend is not learned yet."""
        if self._started is None or now - self._started < self._h_level + self._h_trend:
            return self.level
        return max(0.0, self.level + self.trend * horizon_s)

    def sizing_rate(self, horizon_s: float, now: float) -> float:
        """What to size for: the larger of the rate now and the forecast."""
        return max(self.level, self.forecast(horizon_s, now))


class LengthStats:
    """Decaying means of one tier's request lengths, blended with a prior until enough
    requests finished (``prior_weight`` requests' worth)."""

    __slots__ = ("_ctx", "_h", "_last", "_n", "_p", "_w", "prior_weight")

    def __init__(self, half_life_s: float = 600.0, prior_weight: float = 8.0) -> None:
        self._h = half_life_s
        self.prior_weight = prior_weight
        self._w = 0.0  # Σ weights
        self._p = 0.0  # Σ w·prompt
        self._n = 0.0  # Σ w·output
        self._ctx = 0.0  # Σ w·n·(p + n/2)
        self._last: float | None = None

    def _age(self, now: float) -> None:
        if self._last is not None and now > self._last:
            k = decay(now - self._last, self._h)
            self._w *= k
            self._p *= k
            self._n *= k
            self._ctx *= k
        self._last = now if self._last is None else max(self._last, now)

    def observe(self, prompt: int, output: int, now: float) -> None:
        if output < 1 or prompt < 0:
            return
        self._age(now)
        self._w += 1.0
        self._p += prompt
        self._n += output
        self._ctx += output * (prompt + output / 2.0)

    def observe_sums(self, count: float, prompt: float, output: float, context: float, now: float) -> None:
        """``count`` requests at once, by their sums: Σprompt, Σoutput and Σ n·(p + n/2)
        (what another router process observed, :mod:`slorouter.autoscale.feed`)."""
        if count <= 0:
            return
        self._age(now)
        self._w += count
        self._p += prompt
        self._n += output
        self._ctx += context

    @property
    def support(self) -> float:
        return self._w

    def lengths(self, prior_prompt: float, prior_output: float, now: float) -> Lengths:
        """The means, each blended with the prior by weight."""
        self._age(now)
        w0 = self.prior_weight
        po = max(1.0, prior_output)
        w = self._w + w0
        mp = (self._p + w0 * prior_prompt) / w
        mo = max(1.0, (self._n + w0 * po) / w)
        ctx_sum = self._ctx + w0 * po * (prior_prompt + po / 2.0)
        n_sum = self._n + w0 * po
        return Lengths(mp, mo, ctx_sum / n_sum)


class Attainment:
    """Met / finished requests of one tier over the last ``window_s`` (buckets of
    ``window_s / buckets``; the oldest bucket leaves whole)."""

    __slots__ = ("_buckets", "_span", "_window")

    def __init__(self, window_s: float, buckets: int = 12) -> None:
        self._window = window_s
        self._span = window_s / buckets
        self._buckets: deque[list[float]] = deque()  # [start, met, finished]

    def _trim(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + self._span <= now - self._window:
            self._buckets.popleft()

    def observe(self, met: bool, now: float) -> None:
        self.observe_many(1.0 if met else 0.0, 1.0, now)

    def observe_many(self, met: float, finished: float, now: float) -> None:
        """``finished`` requests at ``now``, ``met`` of them in their SLO."""
        if finished <= 0:
            return
        start = math.floor(now / self._span) * self._span
        if not self._buckets or start > self._buckets[-1][0]:
            self._buckets.append([start, 0.0, 0.0])
        b = self._buckets[-1]
        b[1] += met
        b[2] += finished
        self._trim(now)

    def value(self, now: float) -> float | None:
        """The share met (None: nothing finished in the window)."""
        self._trim(now)
        total = sum(b[2] for b in self._buckets)
        return None if total == 0 else sum(b[1] for b in self._buckets) / total

    def finished(self, now: float) -> int:
        self._trim(now)
        return int(sum(b[2] for b in self._buckets))
