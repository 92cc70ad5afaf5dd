"""Goodput from sweep points, and the doubling + bisection search."""

from __future__ import annotations

from typing import Any

import pytest

from loadgen import sweep


def point(rate: float, tiers: dict[str, float | None], overall: float | None = None) -> dict[str, Any]:
    slo = [t for t in tiers if t != "bulk"]
    return {"rate": rate, "tiers": tiers, "slo_tiers": slo, "overall": overall}


def test_goodput_is_the_last_pass_before_the_first_failure() -> None:
    pts = [
        point(2, {"gold": 1.0, "silver": 1.0, "bulk": 0.1}, 1.0),
        point(4, {"gold": 0.995, "silver": 0.95, "bulk": 0.0}, 0.97),
        point(8, {"gold": 0.93, "silver": 0.5, "bulk": 0.0}, 0.92),
        point(16, {"gold": 0.6, "silver": 0.95, "bulk": 0.0}, 0.7),  # silver passing again: noise
    ]
    g = sweep.goodput_table(pts, servers=2)
    assert g["90"]["per_tier"] == {"bulk": None, "gold": 8, "silver": 4}
    assert g["99"]["per_tier"]["gold"] == 4 and g["99"]["per_tier"]["silver"] == 2
    assert g["90"]["all_tiers"] == 4  # best effort does not decide
    assert g["90"]["overall_attainment"] == 8  # the overall variant hides silver's collapse
    assert g["90"]["all_tiers_per_server"] == 2


async def test_search_doubles_then_bisects() -> None:
    seen: list[float] = []

    async def run_at(rate: float) -> dict[str, Any]:
        seen.append(rate)
        return point(rate, {"t": 1.0 if rate <= 13 else 0.5})

    pts = await sweep.search(run_at, rate_lo=1, rate_hi=1000, steps=4)
    assert seen == [1, 2, 4, 8, 16, 12, 14, 13, 13.5]
    assert sweep.goodput_of(pts, "__all__", 0.9) == 13


async def test_search_stops_at_the_cap_and_when_nothing_passes() -> None:
    async def always(rate: float) -> dict[str, Any]:
        return point(rate, {"t": 1.0})

    pts = await sweep.search(always, rate_lo=3, rate_hi=10, steps=3)
    assert [p["rate"] for p in pts] == [3, 6, 10]

    async def never(rate: float) -> dict[str, Any]:
        return point(rate, {"t": 0.2})

    pts = await sweep.search(never, rate_lo=3, rate_hi=10, steps=3)
    assert [p["rate"] for p in pts] == [3]
    assert sweep.goodput_of(pts, "__all__", 0.9) is None


@pytest.mark.parametrize("value", [None, 0.0])
def test_a_tier_without_data_does_not_pass(value: float | None) -> None:
    assert sweep.goodput_of([point(1, {"t": value})], "t", 0.9) is None
