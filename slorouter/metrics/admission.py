"""The admission collector: what the admission core decided — requests it shed (answered
429 itself) by tier and reason, and how long requests waited in the router before their
decision, per tier and outcome.

:meth:`AdmissionMetrics.observe` is the core's ``observe`` hook (once per decided
request, never per token): plain numbers, read when ``/metrics`` is scraped.
"""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

from slorouter.admission.core import SHED_REASONS
from slorouter.metrics.requests import Histogram

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class AdmissionMetrics:
    """Pass :meth:`observe` to the dispatcher and the object to the app's registry."""

    def __init__(self) -> None:
        self.shed: dict[tuple[str, str], int] = {}
        self.waits: dict[tuple[str, str], Histogram] = {}

    def observe(self, tier: str, wait_s: float, outcome: str, reason: str) -> None:
        if reason in SHED_REASONS:
            key = (tier, reason)
            self.shed[key] = self.shed.get(key, 0) + 1
        h = self.waits.get((tier, outcome))
        if h is None:
            h = self.waits[(tier, outcome)] = Histogram(WAIT_BUCKETS)
        h.observe(max(0.0, wait_s))

    def describe(self) -> list[Metric]:
        return list(_families())

    def collect(self) -> list[Metric]:
        shed, waits = _families()
        for (tier, reason), n in sorted(self.shed.items()):
            shed.add_metric([tier, reason], n)
        for (tier, outcome), h in sorted(self.waits.items()):
            waits.add_metric([tier, outcome], h.cumulative(), h.sum)
        return [shed, waits]


def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
    return (
        CounterMetricFamily(
            "slorouter_shed_requests",
            "Requests the router answered 429 itself, by tier and reason "
            "(late, wait_limit, overload, queue_full).",
            labels=["tier", "reason"],
        ),
        HistogramMetricFamily(
            "slorouter_queue_wait_seconds",
            "Time from arrival at the router to the admission decision (outcome: dispatched or rejected).",
            labels=["tier", "outcome"],
        ),
    )
