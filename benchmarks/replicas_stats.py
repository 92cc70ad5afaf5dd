"""The statistics of :mod:`benchmarks.replicas`: one router's operating point over several
seeds, and paired differences per seed against it.

Operating point. The issue asks for "the rate where one router attains ≥ 90 % on every
tier". One seed does not define it: near that rate a seed moves a tier by several
points, so the rate found at one seed is a property of that seed. Over the seeds the
benchmark then runs, :func:`probe_summary` judges a rate by each tier's attainment
**averaged over the seeds** (``rule="mean"``; each seed has the same number of requests,
so this is the attainment of the pooled workload — one long run cut into independent
pieces). ``rule="every"`` (every seed ≥ 90 % on every tier) is offered but is not the
default: its rate falls as seeds are added (the minimum of more noisy values is lower),
so it converges to no operating point.

Paired differences. A configuration and one router at the same seed share the workload
and the arrival split, so what varies between seeds cancels partly: :func:`paired`
gives, per tier, the mean over seeds of (configuration − one router) in points, the
seed-to-seed standard deviation of that difference and the standard error of its mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

RULES = ("mean", "every")


def probe_summary(per_seed: Sequence[Mapping[str, Any]], rule: str = "mean") -> dict[str, Any]:
    """A summary of one rate over several seeds, in the shape the goodput sweep reads
    (``min_tier_dslo_attainment``, ``overall.dslo_attainment``): per seed, ``tiers``
    {name: attainment} and ``overall`` (attainment)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    if not per_seed:
        raise ValueError("no seeds")
    n = len(per_seed)
    names = list(per_seed[0]["tiers"])
    tiers = {t: sum(p["tiers"][t] for p in per_seed) / n for t in names}
    # mean: the pooled run's worst tier; every: the worst tier of the worst seed
    worst = min(tiers.values()) if rule == "mean" else min(min(p["tiers"].values()) for p in per_seed)
    return {
        "min_tier_dslo_attainment": worst,
        "overall": {"dslo_attainment": sum(p["overall"] for p in per_seed) / n},
        "tiers": tiers,
    }


def _sd(xs: Sequence[float]) -> float:
    n = len(xs)
    if n < 2:
        return math.nan
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def paired(run: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-seed differences of a configuration against the baseline at the same seeds
    (lists aligned by seed: ``tiers`` {name: attainment}, ``goodput_rps_per_server``).

    Returns per tier the mean difference in points, its seed-to-seed SD and the standard
    error of the mean; the worst tier (lowest mean difference) with its SE; goodput per
    server relative to the baseline's mean, with the SE of that ratio (from the per-seed
    differences)."""
    if len(run) != len(base) or not run:
        raise ValueError("the runs and the baseline need the same, non-empty list of seeds")
    n = len(run)
    names = list(base[0]["tiers"])
    mean: dict[str, float] = {}
    sd: dict[str, float] = {}
    for t in names:
        d = [100.0 * (r["tiers"][t] - b["tiers"][t]) for r, b in zip(run, base, strict=True)]
        mean[t] = sum(d) / n
        sd[t] = _sd(d)
    worst = min(names, key=lambda t: mean[t])
    gb = sum(b["goodput_rps_per_server"] for b in base) / n
    gd = [r["goodput_rps_per_server"] - b["goodput_rps_per_server"] for r, b in zip(run, base, strict=True)]
    return {
        "tier_delta_points": mean,
        "tier_delta_sd_points": sd,
        "tier_delta_se_points": {t: sd[t] / math.sqrt(n) for t in names},
        "worst_tier": worst,
        "min_tier_delta_points": mean[worst],
        "min_tier_delta_se_points": sd[worst] / math.sqrt(n),
        "goodput_vs_baseline": 1.0 + sum(gd) / n / gb if gb > 0 else math.nan,
        "goodput_vs_baseline_se": _sd(gd) / math.sqrt(n) / gb if gb > 0 else math.nan,
    }
