"""The sync collector: how this router process shares its load picture with the others
(:class:`~slorouter.proxy.syncloop.SyncLoop`), and the **fleet view** — the picture all
of them share — exported by the leader only.

Every replica exports its own counters and per-replica gauges (requests, tokens, its own
in-flight load: they sum across replicas). The shared view is the same in every replica
(up to a tick), so summing it would count it once per replica: its gauges are named
apart (``slorouter_fleet_*``) and only the process holding the leader lease exports them
— one series per backend for the whole fleet, whichever replica Prometheus scrapes. A
router alone (no ``state.sync``) is its own leader and fleet.
"""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from slorouter.proxy.syncloop import SyncLoop
from slorouter.state.tracker import Tracker


class SyncMetrics:
    def __init__(self, tracker: Tracker, syncer: SyncLoop | None) -> None:
        self.tracker = tracker
        self.syncer = syncer

    def describe(self) -> list[Metric]:
        return _Families().all()

    def collect(self) -> list[Metric]:
        f = _Families()
        s = self.syncer
        leader = s is None or s.leader
        f.leader.add_metric([], int(leader))
        f.peers.add_metric([], s.peers if s is not None else 0)
        f.age.add_metric([], s.age_s if s is not None else 0.0)
        f.share.add_metric([], s.sync.share if s is not None else 1.0)
        if s is not None:  # no store, no store metrics
            f.up.add_metric([], int(s.up))
            f.failures.add_metric([], s.failures)
            f.ticks.add_metric([], s.ticks)
            ls = s.sync.learning
            if ls is not None:
                f.observations.add_metric(["published"], ls.sent)
                f.observations.add_metric(["learned"], ls.received)
                f.observations.add_metric(["missed"], ls.missed)
                f.observations.add_metric(["malformed_rows"], ls.bad)
        if leader:
            self._fleet(f, s)
        return f.all()

    def _fleet(self, f: _Families, s: SyncLoop | None) -> None:
        t = self.tracker
        f.routers.add_metric([], 1 + (s.peers if s is not None else 0))
        for b in t.backends.backends:
            c = s.sync.shared(b.id) if s is not None else t.loads[b.id].as_tuple()
            f.inflight.add_metric([b.id, b.tier], c[0])
            f.inflight_tokens.add_metric([b.id, b.tier, "prompt"], c[1])
            f.inflight_tokens.add_metric([b.id, b.tier, "output"], c[2])
        remote = t.remote_queued
        for tr in t.backends.tiers:
            f.waiting.add_metric([tr.name], t.queued.get(tr.name, 0) + remote.get(tr.name, 0))


class _Families:
    def __init__(self) -> None:
        self.leader = GaugeMetricFamily(
            "slorouter_leader", "1 while this router process holds the leader lease (or runs alone)."
        )
        self.peers = GaugeMetricFamily(
            "slorouter_sync_peers", "Other router processes whose rows are in this one's view."
        )
        self.age = GaugeMetricFamily(
            "slorouter_sync_age_seconds", "Age of the oldest other process's row in this one's view."
        )
        self.share = GaugeMetricFamily(
            "slorouter_sync_share", "This process's share of recent arrivals (the herding quota's s)."
        )
        self.up = GaugeMetricFamily(
            "slorouter_sync_store_up", "1 when the last exchange with the shared store succeeded."
        )
        self.failures = CounterMetricFamily(
            "slorouter_sync_failures", "Sync ticks that failed (store unreachable, timed out or broken)."
        )
        self.ticks = CounterMetricFamily("slorouter_sync_ticks", "Sync ticks run (publish, read, absorb).")
        self.observations = CounterMetricFamily(
            "slorouter_sync_observations",
            "Latency-model observations (one per finished response) this process published with its"
            " row, learned from the others' rows, or missed (gone from a row before it was read);"
            " malformed_rows: rows whose observations did not decode.",
            labels=["way"],
        )
        self.routers = GaugeMetricFamily(
            "slorouter_fleet_routers", "Router processes in the shared view (leader only)."
        )
        self.inflight = GaugeMetricFamily(
            "slorouter_fleet_inflight_requests",
            "Requests running on a backend, placed by any router process (leader only).",
            labels=["backend", "tier"],
        )
        self.inflight_tokens = GaugeMetricFamily(
            "slorouter_fleet_inflight_tokens",
            "Tokens held by in-flight requests on a backend, any router process (leader only).",
            labels=["backend", "tier", "kind"],
        )
        self.waiting = GaugeMetricFamily(
            "slorouter_fleet_queue_waiting_requests",
            "Requests waiting in the queues of all router processes (leader only).",
            labels=["tier"],
        )

    def all(self) -> list[Metric]:
        return [
            self.leader,
            self.peers,
            self.age,
            self.share,
            self.up,
            self.failures,
            self.ticks,
            self.observations,
            self.routers,
            self.inflight,
            self.inflight_tokens,
            self.waiting,
        ]
