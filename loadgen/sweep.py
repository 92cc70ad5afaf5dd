"""Rate sweeps and goodput.

**Goodput at x %** (docs/loadgen.md) = the highest offered rate at which attainment is
≥ x % — for one tier (its own attainment), for all tiers (``all_tiers``: every tier with
an SLO at ≥ x %, the decision criterion), and for overall attainment
(``overall_attainment``, the PolyServe-style variant that can hide a starved tier).
Over a list of measured rates it is the last rate of the passing run that starts at
the lowest rate (a pass at a higher rate after a failure is treated as noise and does
not count). ``per_server`` divides by ``--servers``.

``--search`` finds the all-tiers 90 % goodput by doubling from ``rate_lo`` until a
rate fails (or ``rate_hi``), then bisecting between the last pass and the first failure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

THRESHOLDS = (0.90, 0.99)

Point = dict[str, Any]
RunAt = Callable[[float], Awaitable[Point]]


def point_from_doc(rate: float, doc: dict[str, Any]) -> Point:
    """The compact summary of one run kept in a sweep."""
    slo_tiers = {n: b for n, b in doc["tiers"].items() if b["slo"]["class"] != "best_effort"}
    keep = (
        "completed", "failed", "request_throughput", "request_goodput", "output_throughput",
        "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "p99_itl_ms",
        "median_e2el_ms", "p99_e2el_ms", "duration",
    )  # fmt: skip
    return {
        "rate": rate,
        "tiers": {n: b["attainment"] for n, b in doc["tiers"].items()},
        "slo_tiers": sorted(slo_tiers),
        "overall": doc["overall"]["attainment"],
        "min_tier_attainment": doc["overall"]["min_tier_attainment"],
        "schedule_lag_p99_ms": doc["loadgen"]["schedule_lag_ms"]["p99"],
        "behind": doc["loadgen"]["behind"],
        "vllm": {k: doc[k] for k in keep},
        "tier_details": {
            n: {
                k: b[k]
                for k in ("attainment_dslo", "attainment_mean_tpot", "attainment_deadline", "arrivals")
            }
            for n, b in doc["tiers"].items()
        },
    }


def _passes(p: Point, key: str, thr: float) -> bool:
    if key == "__all__":
        vals = [p["tiers"].get(t) for t in p["slo_tiers"]]
        return bool(vals) and all(v is not None and v >= thr for v in vals)
    if key == "__overall__":
        return p["overall"] is not None and p["overall"] >= thr
    v = p["tiers"].get(key)
    return v is not None and v >= thr


def goodput_of(points: list[Point], key: str, thr: float) -> float | None:
    best = None
    for p in sorted(points, key=lambda q: q["rate"]):
        if not _passes(p, key, thr):
            break
        best = p["rate"]
    return best


def goodput_table(points: list[Point], servers: int = 1) -> dict[str, Any]:
    tiers = sorted({t for p in points for t in p["tiers"]})
    out: dict[str, Any] = {"servers": servers}
    for thr in THRESHOLDS:
        key = f"{round(thr * 100)}"
        block: dict[str, Any] = {
            "per_tier": {t: goodput_of(points, t, thr) for t in tiers},
            "all_tiers": goodput_of(points, "__all__", thr),
            "overall_attainment": goodput_of(points, "__overall__", thr),
        }
        block["all_tiers_per_server"] = None if block["all_tiers"] is None else block["all_tiers"] / servers
        block["overall_attainment_per_server"] = (
            None if block["overall_attainment"] is None else block["overall_attainment"] / servers
        )
        out[key] = block
    return out


async def run_rates(rates: list[float], run_at: RunAt) -> list[Point]:
    return [await run_at(r) for r in sorted(rates)]


async def search(run_at: RunAt, rate_lo: float, rate_hi: float, steps: int, thr: float = 0.90) -> list[Point]:
    """Double, then bisect, on the all-tiers criterion at ``thr``."""
    points: list[Point] = []
    lo: float | None = None
    hi: float | None = None
    r = rate_lo
    while True:
        p = await run_at(r)
        points.append(p)
        if _passes(p, "__all__", thr):
            lo = r
            if r >= rate_hi:
                return points
            r = min(r * 2.0, rate_hi)
        else:
            hi = r
            break
    if lo is None:
        return points  # even the lowest rate fails
    for _ in range(steps):
        mid = (lo + hi) / 2.0
        p = await run_at(mid)
        points.append(p)
        if _passes(p, "__all__", thr):
            lo = mid
        else:
            hi = mid
    return points
