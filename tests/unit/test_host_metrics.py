"""The host's ``/metrics`` with several workers (:mod:`slorouter.metrics.host`): how the
workers' families merge, and the exchange itself — real pipes and snapshot files, two
workers' parts in one event loop (the subprocess test is
``tests/integration/test_workers_metrics.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from slorouter.metrics.host import Family, HostMetrics, HostShare, merge


class Part:
    """A worker's collectors, reduced to what the rules tell apart."""

    def __init__(self, leader: bool) -> None:
        self.requests = 0
        self.inflight = 0
        self.leader = leader

    def collect(self) -> list[Metric]:
        c = CounterMetricFamily("slorouter_requests", "r", labels=["tier"])
        c.add_metric(["chat"], self.requests)
        own = GaugeMetricFamily("slorouter_backend_inflight_requests", "i", labels=["backend"])
        own.add_metric(["e0"], self.inflight)
        view = GaugeMetricFamily("slorouter_backend_healthy", "h", labels=["backend"])
        view.add_metric(["e0"], 1)
        lead = GaugeMetricFamily("slorouter_leader", "l", value=int(self.leader))
        out: list[Metric] = [c, own, view, lead]
        if self.leader:
            out.append(GaugeMetricFamily("slorouter_fleet_routers", "f", value=2))
        return out


def _samples(metrics: list[Metric]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for m in metrics for s in m.samples}


def _fams(part: Part) -> list[Family]:
    return [
        (m.name, m.type, m.documentation, [(s.name, dict(s.labels), s.value) for s in m.samples])
        for m in part.collect()
    ]


def test_merge_sums_counters_and_own_load_takes_the_leaders_fleet_view_and_labels_views() -> None:
    a, b = Part(leader=True), Part(leader=False)
    a.requests, b.requests, a.inflight, b.inflight = 3, 4, 1, 2
    got = _samples(merge({0: _fams(a), 1: _fams(b)}, fresh={0, 1}))
    assert got[("slorouter_requests_total", frozenset({("tier", "chat")}))] == 7
    assert got[("slorouter_backend_inflight_requests", frozenset({("backend", "e0")}))] == 3
    assert got[("slorouter_leader", frozenset())] == 1
    assert got[("slorouter_fleet_routers", frozenset())] == 2  # once, not summed
    assert {k for k in got if k[0] == "slorouter_backend_healthy"} == {
        ("slorouter_backend_healthy", frozenset({("backend", "e0"), ("worker", "0")})),
        ("slorouter_backend_healthy", frozenset({("backend", "e0"), ("worker", "1")})),
    }


def test_a_worker_that_did_not_answer_counts_by_its_counters_only() -> None:
    a, b = Part(leader=False), Part(leader=True)
    a.requests, b.requests, a.inflight, b.inflight = 3, 4, 1, 2
    got = _samples(merge({0: _fams(a), 1: _fams(b)}, fresh={0}))
    assert got[("slorouter_requests_total", frozenset({("tier", "chat")}))] == 7  # never goes back
    assert got[("slorouter_backend_inflight_requests", frozenset({("backend", "e0")}))] == 1
    assert ("slorouter_fleet_routers", frozenset()) not in got  # its leadership is not known
    assert ("slorouter_backend_healthy", frozenset({("backend", "e0"), ("worker", "1")})) not in got


@pytest.fixture
def pipes() -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    fds = [os.pipe() for _ in range(2)]
    for pair in fds:
        for fd in pair:
            os.set_blocking(fd, False)
    yield tuple(r for r, _ in fds), tuple(w for _, w in fds)
    for pair in fds:
        for fd in pair:
            os.close(fd)


async def test_a_scrape_gets_the_others_current_values_and_survives_a_restart(
    tmp_path: Path, pipes: tuple[tuple[int, ...], tuple[int, ...]]
) -> None:
    reads, writes = pipes
    parts = [Part(leader=True), Part(leader=False)]
    hosts = [HostMetrics(HostShare(str(tmp_path), i, reads, writes), parts[i], wait_s=5.0) for i in (0, 1)]
    for h in hosts:
        h.start()
    try:
        parts[0].requests, parts[1].requests, parts[1].inflight = 2, 5, 1
        snaps, fresh = await hosts[0].gather()  # worker 1 writes its snapshot when asked
        assert fresh == {0, 1}
        got = _samples(merge(snaps, fresh))
        assert got[("slorouter_requests_total", frozenset({("tier", "chat")}))] == 7
        assert got[("slorouter_backend_inflight_requests", frozenset({("backend", "e0")}))] == 1

        parts[1].requests = 6  # worker 1 counts one more, then dies before any scrape
        hosts[1].stop()
        hosts[0].wait_s = 0.05
        snaps, fresh = await hosts[0].gather()
        assert fresh == {0} and hosts[0].late == 1
        got = _samples(merge(snaps, fresh))
        assert got[("slorouter_requests_total", frozenset({("tier", "chat")}))] == 7  # its last snapshot
        assert got[("slorouter_backend_inflight_requests", frozenset({("backend", "e0")}))] == 0

        # started again in the same slot: continues from the dead worker's last snapshot
        parts[1] = Part(leader=False)
        hosts[1] = HostMetrics(HostShare(str(tmp_path), 1, reads, writes), parts[1], wait_s=5.0)
        hosts[1].start()
        parts[1].requests = 1
        hosts[0].wait_s = 5.0
        snaps, fresh = await hosts[0].gather()
        assert fresh == {0, 1}
        got = _samples(merge(snaps, fresh))
        assert got[("slorouter_requests_total", frozenset({("tier", "chat")}))] == 2 + 5 + 1
    finally:
        for h in hosts:
            h.stop()
