"""Scaling plans on server counts: servers needed per tier, moves before adds, releases
of idle servers, donors and pinned servers (the rules the scaler applies each tick)."""

from __future__ import annotations

import math

import pytest

from slorouter.autoscale.plan import ScalePlan, TierTarget, plan, servers_needed, tier_costs
from slorouter.models.fluid import Lengths, tier_cost
from slorouter.models.static import EngineLimits, LinearStep

COEF = LinearStep(0.007, 5e-5, 6e-8, 2.5e-5)
LIM = EngineLimits(256, 442_368, 2048)
CONV = Lengths(1154.7, 211.13, 1227.0)


@pytest.mark.parametrize(
    ("rate", "cost", "busy", "want"),
    [
        (0.0, 0.1, False, 0),
        (0.0, 0.1, True, 1),  # nothing arriving but requests in the system
        (0.05, 0.1, False, 0),  # below MIN_LOAD servers' worth: no server for it
        (10.0, 0.085, False, 1),  # 0.85 servers at 85 % -> 1
        (100.0, 0.085, False, 10),
        (100.1, 0.085, False, 11),
        (5.0, math.inf, False, 1),
    ],
)
def test_servers_needed(rate: float, cost: float, busy: bool, want: int) -> None:
    assert servers_needed(rate, cost, 0.85, busy=busy) == want


def test_tier_costs_follow_the_fluid_model() -> None:
    costs = tier_costs(COEF, LIM, {"t20": 0.020, "t100": 0.100, "batch": None}, CONV)
    b20, step20, c20 = tier_cost(COEF, LIM, 0.020, CONV)
    assert (b20, round(step20 * 1e3, 2), round(c20, 4)) == (49, 19.77, 0.0852)  # docs/policies.md
    assert costs["t20"] == c20 > costs["t100"] >= costs["batch"]


def test_empty_servers_move_to_the_tight_tier_before_anything_is_added() -> None:
    bins = {"t20": ["a"], "t100": ["b", "c", "d"]}
    targets = {"t20": TierTarget(3, 4), "t100": TierTarget(1, 1)}
    p = plan(bins, {"c": 5.0, "d": 100.0}, targets, idle_s=60.0)
    assert p.need == {"t20": 3, "t100": 1}
    assert p.move == {"d": "t20", "c": "t20"}  # the longest idle first
    assert p.moved_from == {"d": "t100", "c": "t100"}
    assert p.add == {} and p.release == ()
    assert p.count_after("t20") == 3 and p.count_after("t100") == 1


def test_a_donor_gives_only_what_it_holds_beyond_keep() -> None:
    bins = {"t20": ["a"], "t100": ["b", "c", "d"]}
    p = plan(bins, {"c": 5.0, "d": 100.0}, {"t20": TierTarget(3, 3), "t100": TierTarget(1, 2)})
    assert p.move == {"d": "t20"} and p.add == {"t20": 1}


def test_donors_and_pinned_servers_are_respected() -> None:
    bins = {"t20": ["a"], "t100": ["b", "c", "d"]}
    targets = {"t20": TierTarget(3, 3), "t100": TierTarget(1, 1)}
    idle = {"c": 500.0, "d": 500.0}
    assert plan(bins, idle, targets, donors=["t20"]).move == {}
    assert plan(bins, idle, targets, donors=["t20"]).release == ()
    p = plan(bins, idle, targets, pinned=["d"])
    assert p.move == {"c": "t20"} and p.add == {"t20": 1}


def test_missing_servers_are_asked_for_within_the_limit() -> None:
    bins = {"t20": ["a"], "t100": ["b"]}
    targets = {"t20": TierTarget(3, 3), "t100": TierTarget(3, 3)}
    assert plan(bins, {}, targets).add == {"t20": 2, "t100": 2}
    assert plan(bins, {}, targets, max_total=4).add == {"t20": 2}


def test_idle_servers_are_given_back_but_never_below_the_minimum() -> None:
    bins = {"t20": ["a", "b"], "t100": ["c", "d", "e"]}
    targets = {"t20": TierTarget(1, 1), "t100": TierTarget(1, 1)}
    idle = {"b": 120.0, "d": 300.0, "e": 10.0}
    p = plan(bins, idle, targets, idle_s=60.0)
    assert set(p.release) == {"b", "d"}  # "e" has not been idle long enough
    assert isinstance(p, ScalePlan) and p.changes
    assert p.released_from == {"b": "t20", "d": "t100"}
    assert plan(bins, idle, targets, idle_s=60.0, min_total=4).release == ("d",)
    busy = plan(bins, {}, {"t20": TierTarget(2, 2), "t100": TierTarget(3, 3)})
    assert busy.release == () and not busy.move
    kept = plan(bins, idle, {"t20": TierTarget(1, 2), "t100": TierTarget(1, 3)}, idle_s=60.0)
    assert kept.release == ()  # inside the hysteresis band: nothing goes
