"""Scaling decisions: servers needed per tier, moves before adds, releases of idle servers."""

from __future__ import annotations

import math

import pytest

from slorouter.autoscale.plan import ScalePlan, TierLoad, plan, servers_needed, tier_costs
from slorouter.models.fluid import Lengths, tier_cost
from slorouter.models.static import EngineLimits, LinearStep

COEF = LinearStep(0.007, 5e-5, 6e-8, 2.5e-5)
LIM = EngineLimits(256, 442_368, 2048)
CONV = Lengths(1154.7, 211.13, 1227.0)


@pytest.mark.parametrize(
    ("load", "want"),
    [
        (TierLoad(0.0, 0.1), 0),
        (TierLoad(0.0, 0.1, queued=3), 2),  # nothing arriving but requests waiting
        (TierLoad(10.0, 0.085), 1),  # 0.85 servers at 85 % -> 1
        (TierLoad(100.0, 0.085), 10),
        (TierLoad(100.0, 0.085, queued=1), 11),
        (TierLoad(5.0, math.inf), 1),
    ],
)
def test_servers_needed(load: TierLoad, want: int) -> None:
    assert servers_needed(load, target_util=0.85) == want


def test_tier_costs_follow_the_fluid_model() -> None:
    costs = tier_costs(COEF, LIM, {"t20": 0.020, "t100": 0.100, "batch": None}, CONV)
    b20, step20, c20 = tier_cost(COEF, LIM, 0.020, CONV)
    assert (b20, round(step20 * 1e3, 2), round(c20, 4)) == (49, 19.77, 0.0852)  # docs/policies.md
    assert costs["t20"] == c20 > costs["t100"] >= costs["batch"]


def test_empty_servers_move_to_the_tight_tier_before_anything_is_added() -> None:
    bins = {"t20": ["a"], "t100": ["b", "c", "d"]}
    loads = {"t20": TierLoad(30.0, 0.085), "t100": TierLoad(10.0, 0.06)}  # t20 needs 3, t100 needs 1
    p = plan(bins, {"c": 5.0, "d": 100.0}, loads, idle_s=60.0)
    assert p.need == {"t20": 3, "t100": 1}
    assert p.move == {"d": "t20", "c": "t20"}  # the longest idle first
    assert p.add == {} and p.release == ()


def test_missing_servers_are_asked_for_within_the_limit() -> None:
    bins = {"t20": ["a"], "t100": ["b"]}
    loads = {"t20": TierLoad(30.0, 0.085), "t100": TierLoad(30.0, 0.06)}
    assert plan(bins, {}, loads).add == {"t20": 2, "t100": 2}
    assert plan(bins, {}, loads, max_backends=4).add == {"t20": 2}


def test_idle_servers_are_given_back_but_never_below_the_minimum() -> None:
    bins = {"t20": ["a", "b"], "t100": ["c", "d", "e"]}
    loads = {"t20": TierLoad(1.0, 0.085), "t100": TierLoad(1.0, 0.06)}
    idle = {"b": 120.0, "d": 300.0, "e": 10.0}
    p = plan(bins, idle, loads, idle_s=60.0)
    assert set(p.release) == {"b", "d"}  # "e" has not been idle long enough
    assert isinstance(p, ScalePlan) and p.changes
    assert plan(bins, idle, loads, idle_s=60.0, min_backends=4).release == ("d",)
    busy = plan(bins, {}, {"t20": TierLoad(20.0, 0.085), "t100": TierLoad(40.0, 0.06)})
    assert busy.release == () and not busy.move
