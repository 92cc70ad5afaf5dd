"""The request collector: what the tracker saw of finished requests (counters and
histograms per tier) and the load it holds now (gauges per backend and tier).

Counters and histograms are plain numbers bumped by :meth:`RequestMetrics.observe`, a
tracker outcome listener (once per finished request, never per token); gauges are read
from the tracker when ``/metrics`` is scraped. Nothing here runs while a request streams.
The in-flight gauges count this process's own requests, so they sum across router
replicas (the shared view is :mod:`slorouter.metrics.sync`'s ``slorouter_fleet_*``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from slorouter.state.tracker import Tracker
from slorouter.values import Outcome, Status

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    """Bucket counts of one series (upper bounds inclusive, as Prometheus' ``le``)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, observations <= le)`` for every bound, then ``+Inf``."""
        out: list[tuple[str, float]] = []
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((repr(float(b)), acc))  # as the library writes ``le``: 1.0, 0.025
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class RequestMetrics:
    """Register :meth:`observe` as a tracker listener and the object in the app's registry."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.requests: dict[tuple[str, str], int] = {}
        self.output_tokens: dict[str, int] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.ttft: dict[str, Histogram] = {}
        self.itl: dict[str, Histogram] = {}
        self.e2e: dict[str, Histogram] = {}

    def observe(self, o: Outcome) -> None:
        key = (o.tier, o.status.value)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.output_tokens[o.tier] = self.output_tokens.get(o.tier, 0) + o.output_tokens
        self.prompt_tokens[o.tier] = self.prompt_tokens.get(o.tier, 0) + o.prompt_tokens
        ttft = o.ttft_s
        if ttft is not None:
            self.ttft.setdefault(o.tier, Histogram(TTFT_BUCKETS)).observe(ttft)
        if o.step_samples:
            h = self.itl.setdefault(o.tier, Histogram(ITL_BUCKETS))
            for gap, _b, _kv in o.step_samples:
                h.observe(gap)
        if o.status is Status.OK:
            self.e2e.setdefault(o.tier, Histogram(E2E_BUCKETS)).observe(o.finished_at - o.arrival)

    # -- the collector ----------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        return _Families().all()

    def collect(self) -> list[Metric]:
        f = _Families()
        for (tier, status), n in sorted(self.requests.items()):
            f.requests.add_metric([tier, status], n)
        for family, per_tier in (
            (f.output_tokens, self.output_tokens),
            (f.prompt_tokens, self.prompt_tokens),
        ):
            for tier, n in sorted(per_tier.items()):
                family.add_metric([tier], n)
        t = self.tracker
        up = t.health.healthy
        sync = t.sync
        for b in t.backends.backends:
            load = t.loads[b.id]
            # this process's own requests (with replicas, the loads also hold the others'):
            # summed over replicas, the fleet's
            own = sync.own(b.id) if sync is not None else load.as_tuple()
            f.inflight.add_metric([b.id, b.tier], own[0])
            f.inflight_tokens.add_metric([b.id, b.tier, "prompt"], own[1])
            f.inflight_tokens.add_metric([b.id, b.tier, "output"], own[2])
            f.healthy.add_metric([b.id], int(b.id in up))
            f.ttft_extra.add_metric([b.id], t.latency.limits(b.id).ttft_extra(load.running))
        for tr in t.backends.tiers:
            f.waiting.add_metric([tr.name], t.queued.get(tr.name, 0))
        for hist_family, hists in zip(f.histograms, (self.ttft, self.itl, self.e2e), strict=True):
            for tier, h in sorted(hists.items()):
                hist_family.add_metric([tier], h.cumulative(), h.sum)
        return f.all()


class _Families:
    """The families this collector exposes, empty (``describe``) or to be filled (``collect``)."""

    def __init__(self) -> None:
        self.requests = CounterMetricFamily(
            "slorouter_requests", "Finished requests by tier and outcome.", labels=["tier", "status"]
        )
        self.output_tokens = CounterMetricFamily(
            "slorouter_output_tokens", "Output tokens of finished requests.", labels=["tier"]
        )
        self.prompt_tokens = CounterMetricFamily(
            "slorouter_prompt_tokens", "Prompt tokens of finished requests.", labels=["tier"]
        )
        self.inflight = GaugeMetricFamily(
            "slorouter_backend_inflight_requests",
            "Requests running on a backend.",
            labels=["backend", "tier"],
        )
        self.inflight_tokens = GaugeMetricFamily(
            "slorouter_backend_inflight_tokens",
            "Tokens held by in-flight requests on a backend (kind: prompt or output).",
            labels=["backend", "tier", "kind"],
        )
        self.healthy = GaugeMetricFamily(
            "slorouter_backend_healthy", "1 when a backend may receive new requests.", labels=["backend"]
        )
        self.waiting = GaugeMetricFamily(
            "slorouter_queue_waiting_requests", "Requests waiting in the router queue.", labels=["tier"]
        )
        self.ttft_extra = GaugeMetricFamily(
            "slorouter_model_ttft_extra_seconds",
            "Learned time to first token beyond the step model, at the backend's current load.",
            labels=["backend"],
        )
        self.histograms = [
            HistogramMetricFamily(
                "slorouter_ttft_seconds", "Time to first token, from arrival at the router.", labels=["tier"]
            ),
            HistogramMetricFamily(
                "slorouter_itl_seconds",
                "Gap between consecutive streamed chunks (one engine step).",
                labels=["tier"],
            ),
            HistogramMetricFamily(
                "slorouter_e2e_seconds", "Arrival to last byte, successful requests.", labels=["tier"]
            ),
        ]

    def all(self) -> list[Metric]:
        return [
            self.requests,
            self.output_tokens,
            self.prompt_tokens,
            self.inflight,
            self.inflight_tokens,
            self.healthy,
            self.waiting,
            self.ttft_extra,
            *self.histograms,
        ]
