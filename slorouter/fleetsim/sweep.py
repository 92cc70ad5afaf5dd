"""Goodput by bisection: the highest arrival rate at which **every tier** attains its DSLO
at least ``target`` (0.9, and 0.99): goodput as docs/loadgen.md ("Metric definitions") defines it.

Each probe is one full simulation at a rate (same seed: common random numbers, so the
attainment is nearly monotone in the rate). From a starting guess the bracket is grown
by ×1.25 steps, then bisected until ``(hi − lo) / lo ≤ rel_tol``. Probes are cached and
shared between targets. ``criterion="overall"`` decides on overall attainment instead
(PolyServe's variant; reported alongside, never used to pick a winner).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slorouter.fleetsim.fleet import SimResult

RunFn = Callable[[float], SimResult]


@dataclass(slots=True)
class Probe:
    rate: float
    min_tier: float
    overall: float
    result: SimResult


@dataclass(slots=True)
class SweepResult:
    goodput: dict[float, float | None]  # target -> highest passing total rate (None: none found)
    goodput_overall: dict[float, float | None]
    probes: list[Probe] = field(default_factory=list)

    def to_json(self, servers: int) -> dict[str, Any]:
        def per(v: float | None) -> float | None:
            return None if v is None else v / servers

        return {
            "goodput_rps": {f"{t:g}": v for t, v in self.goodput.items()},
            "goodput_rps_per_server": {f"{t:g}": per(v) for t, v in self.goodput.items()},
            "goodput_overall_rps_per_server": {f"{t:g}": per(v) for t, v in self.goodput_overall.items()},
            "probes": [
                {
                    "rate_rps": p.rate,
                    "min_tier_dslo_attainment": p.min_tier,
                    "overall_dslo_attainment": p.overall,
                }
                for p in sorted(self.probes, key=lambda p: p.rate)
            ],
        }


def sweep(
    run: RunFn,
    guess: float,
    *,
    targets: tuple[float, ...] = (0.9, 0.99),
    overall_targets: tuple[float, ...] | None = None,
    rel_tol: float = 0.02,
    max_probes: int = 24,
    on_probe: Callable[[Probe], None] | None = None,
) -> SweepResult:
    cache: dict[float, Probe] = {}

    def probe(rate: float) -> Probe:
        rate = round(rate, 6)
        p = cache.get(rate)
        if p is None:
            r = run(rate)
            s = r.summary
            p = Probe(
                rate, float(s["min_tier_dslo_attainment"] or 0.0), float(s["overall"]["dslo_attainment"]), r
            )
            cache[rate] = p
            if on_probe is not None:
                on_probe(p)
        return p

    def search(ok: Callable[[Probe], bool]) -> float | None:
        passing = [p.rate for p in cache.values() if ok(p)]
        failing = [p.rate for p in cache.values() if not ok(p)]
        lo = max(passing) if passing else None
        hi = min((r for r in failing if lo is None or r > lo), default=None)
        if lo is None and hi is None:
            probe(guess)
            return search(ok)
        steps = 0
        while hi is None and len(cache) < max_probes and steps < 12:
            assert lo is not None
            steps += 1
            nxt = lo * 1.25
            if ok(probe(nxt)):
                lo = nxt
            else:
                hi = nxt
        while lo is None and len(cache) < max_probes and steps < 24:
            assert hi is not None
            steps += 1
            nxt = hi / 1.25
            if nxt < guess * 1e-3:
                return None
            if ok(probe(nxt)):
                lo = nxt
            else:
                hi = nxt
        if lo is None or hi is None:
            return None if lo is None else round(lo, 6)
        while (hi - lo) / lo > rel_tol and len(cache) < max_probes:
            mid = (lo + hi) / 2
            if ok(probe(mid)):
                lo = mid
            else:
                hi = mid
        return round(lo, 6)

    goodput: dict[float, float | None] = {}
    overall: dict[float, float | None] = {}
    for t in targets:
        goodput[t] = search(lambda p, t=t: p.min_tier >= t)  # type: ignore[misc]
    for t in targets if overall_targets is None else overall_targets:
        overall[t] = search(lambda p, t=t: p.overall >= t)  # type: ignore[misc]
    return SweepResult(goodput, overall, list(cache.values()))
