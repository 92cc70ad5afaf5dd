"""Time-varying arrival rates: the envelope ``m(t)`` of a scenario's workload
(``workload.envelope``, :class:`~slorouter.fleetsim.scenario.EnvelopeSpec`).

The instantaneous rate is ``rate · m(t)``, piecewise constant. Arrivals come from the
scenario's own stream (Poisson or gamma at ``rate``, the same random numbers as without
an envelope) through a change of time: an arrival at ``u`` on the homogeneous clock
happens at ``t = M⁻¹(u)`` where ``M(t) = ∫₀ᵗ m`` — so the process keeps its kind and its
burstiness, only its rate follows ``m``.

* ``diurnal`` — the arrival pattern of a trace (default: the Azure conversation trace,
  one hour): arrivals counted per 60 s of the trace (whole minutes), smoothed by a centred moving average
  of ``smooth_s``, mapped affinely so the pattern's trough is 1 and its peak ``swing``,
  then divided by its mean (``rate`` is the **mean** rate: peak = ``rate · max m``). The
  trace's span is mapped onto ``period_s`` and the pattern repeats.
* ``steps`` — ``[from_s, multiplier]`` pairs (``rate`` is the base rate); the last one
  holds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from slorouter.fleetsim.scenario import EnvelopeSpec

BIN_S = 60.0  # the trace's arrivals are counted per this many of its seconds


@dataclass(frozen=True, slots=True)
class Envelope:
    """``m(t)`` piecewise constant: ``mult[k]`` from ``starts[k]``; ``period_s`` (None: the
    last piece holds for ever) makes it repeat."""

    starts: tuple[float, ...]
    mult: tuple[float, ...]
    period_s: float | None = None
    _cum: tuple[float, ...] = ()  # M(starts[k])

    @staticmethod
    def of(starts: Sequence[float], mult: Sequence[float], period_s: float | None = None) -> Envelope:
        if not starts or len(starts) != len(mult) or starts[0] != 0.0:
            raise ValueError("an envelope needs pieces from 0")
        if any(m <= 0 for m in mult):
            raise ValueError("multipliers must be > 0")
        cum = [0.0]
        for k in range(1, len(starts)):
            cum.append(cum[-1] + mult[k - 1] * (starts[k] - starts[k - 1]))
        return Envelope(tuple(starts), tuple(mult), period_s, tuple(cum))

    def _period_mass(self) -> float:
        assert self.period_s is not None
        return self._cum[-1] + self.mult[-1] * (self.period_s - self.starts[-1])

    def at(self, t: float) -> float:
        """``m(t)``."""
        if self.period_s is not None:
            t = math.fmod(t, self.period_s)
        return self.mult[max(0, bisect.bisect_right(self.starts, t) - 1)]

    def mass(self, t: float) -> float:
        """``M(t) = ∫₀ᵗ m``."""
        base = 0.0
        if self.period_s is not None:
            k, t = divmod(t, self.period_s)
            base = k * self._period_mass()
        i = max(0, bisect.bisect_right(self.starts, t) - 1)
        return base + self._cum[i] + self.mult[i] * (t - self.starts[i])

    def time_at(self, u: float) -> float:
        """``M⁻¹(u)``: the time by which the mass ``u`` has passed."""
        base = 0.0
        if self.period_s is not None:
            pm = self._period_mass()
            k, u = divmod(u, pm)
            base = k * self.period_s
        i = max(0, bisect.bisect_right(self._cum, u) - 1)
        return base + self.starts[i] + (u - self._cum[i]) / self.mult[i]

    @property
    def peak(self) -> float:
        return max(self.mult)

    @property
    def trough(self) -> float:
        return min(self.mult)


def diurnal(arrived_at: Sequence[float], swing: float, period_s: float, smooth_s: float) -> Envelope:
    """The trace's arrival pattern (see the module docs)."""
    if len(arrived_at) < 2 or arrived_at[-1] <= arrived_at[0]:
        raise ValueError("the trace needs arrivals spread over time for a diurnal pattern")
    t0 = arrived_at[0]
    span = arrived_at[-1] - t0
    n = max(1, int(span // BIN_S))  # whole bins only (a trace cut mid-bin would read as a trough)
    width = min(BIN_S, span)
    counts = [0] * n
    for a in arrived_at:
        k = int((a - t0) // width)
        if k < n:
            counts[k] += 1
    rates = [c / width for c in counts]
    half = round(smooth_s / BIN_S) // 2
    smooth = []
    for k in range(n):
        win = rates[max(0, k - half) : k + half + 1]
        smooth.append(sum(win) / len(win))
    lo, hi = min(smooth), max(smooth)
    raw = [1.0] * n if hi <= lo else [1.0 + (swing - 1.0) * (r - lo) / (hi - lo) for r in smooth]
    mean = sum(raw) / n
    step = period_s / n
    return Envelope.of([k * step for k in range(n)], [r / mean for r in raw], period_s)


def build(spec: EnvelopeSpec, trace_arrivals: Sequence[float] | None) -> Envelope:
    """The envelope of ``spec`` (``trace_arrivals``: the named trace's timestamps, for
    ``diurnal``)."""
    if spec.kind == "steps":
        return Envelope.of([s for s, _ in spec.steps], [m for _, m in spec.steps])
    if trace_arrivals is None:
        raise ValueError("a diurnal envelope needs a trace")
    return diurnal(trace_arrivals, spec.swing, spec.period_s, spec.smooth_s)
