"""The fleet simulator's router replicas (slorouter/fleetsim/replicas.py): exchanges on the
tick and, with ``event_ms``, soon after a replica's own row changed."""

from __future__ import annotations

import pytest

from slorouter.fleetsim.fleet import FleetSim, SimOptions, run_once
from slorouter.fleetsim.replicas import ReplicaOptions
from slorouter.fleetsim.scenario import load_scenario

RATE = 60.0  # req/s on 4 servers: busy, every replica places requests every few ms


def exchanges(sync_ms: float, event_ms: float, replicas: int = 2) -> float:
    scn = load_scenario("polyserve-conv")
    opt = SimOptions(replicas=ReplicaOptions(replicas, sync_ms, event_ms=event_ms))
    res = run_once(scn, "polyserve", RATE, servers=4, requests=1200, options=opt)
    assert res.sync_exchanges_per_s is not None
    return res.sync_exchanges_per_s


def test_ticks_only_exchange_once_per_interval() -> None:
    assert exchanges(100, 0) == pytest.approx(10.0, rel=0.05)


def test_event_driven_exchanges_come_between_ticks_at_most_once_per_gap() -> None:
    # every replica places or finishes a request every few ms: it exchanges about once
    # per gap (never more often), far more often than its tick
    ev = exchanges(100, 20)
    assert 20.0 < ev <= 50.0 + 0.5
    # a gap longer than the tick changes nothing: the tick comes first
    assert exchanges(100, 150) == pytest.approx(10.0, rel=0.05)


def test_one_router_has_no_exchanges() -> None:
    scn = load_scenario("polyserve-conv")
    res = run_once(scn, "polyserve", RATE, servers=4, requests=300)
    assert res.sync_exchanges_per_s is None


def learned_outcomes(share: bool) -> tuple[list[int], int]:
    """Per replica, the responses its latency model learned from; and the requests finished."""
    scn = load_scenario("polyserve-conv")
    opt = SimOptions(replicas=ReplicaOptions(2, 50, share_learning=share))
    fleet = FleetSim(scn, "polyserve", rate=RATE, servers=4, requests=1200, options=opt)
    res = fleet.run()
    per = [sum(r.latency.describe(b.id)["batches"] for b in fleet.backends.backends) for r in fleet.routers]
    return per, int(res.summary["overall"]["finished"])


def test_every_replica_learns_from_every_replicas_outcomes() -> None:
    """Replicas publish what their latency models learn from with their rows: each model
    learns from (nearly) every response of the run — all but those that finished after
    the last exchange —, not from its own half."""
    shared, n = learned_outcomes(True)
    own, _ = learned_outcomes(False)
    assert all(0.97 * n <= x <= n for x in shared)
    assert all(0.3 * n <= x <= 0.7 * n for x in own)
    assert sum(own) >= 0.97 * n
