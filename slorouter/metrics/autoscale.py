"""The autoscale collector: the scaler's state, read at scrape time. The families are
built as plain values first (:func:`autoscale_families`: name, type, help, labels,
samples — usable by the simulator or any exposition) and turned into
``prometheus_client`` families by :class:`AutoscaleMetrics`.

Per tier (label ``tier``), what an HPA/KEDA setup reads directly:

==========================================  ====================================================
``slorouter_autoscale_desired_servers``     servers the tier should have (KEDA ``AverageValue``
                                            target 1 → desired replicas)
``slorouter_autoscale_current_servers``     servers of the tier in the router's set now
``slorouter_autoscale_needed_servers``      ``ceil(λ·cost/target_utilization)`` (+1 fast trigger)
``slorouter_autoscale_headroom_servers``    current − λ·cost/target_utilization (< 0: short)
``slorouter_autoscale_queued_requests``     requests of the tier waiting in the router queue
``slorouter_autoscale_attainment_ratio``    met / finished over ``attainment_window_s``
``slorouter_autoscale_arrival_rate``        the rate's level [req/s]; ``..._sizing_rate``: sized for
``slorouter_autoscale_cost_server_seconds`` fluid server-seconds per request at the tier's pace
``slorouter_autoscale_deferrals_total``     on-time requests that fit nowhere (counter)
``slorouter_autoscale_decisions_total``     decisions by ``kind`` out / in / move (counter)
==========================================  ====================================================

and ``slorouter_autoscale_advisory`` (1 in advisory mode), ``slorouter_autoscale_webhook_total``
by ``result`` (delivered / retried / failed / dropped). With several router processes only the
leader (the one whose scaler runs) exports them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from slorouter.actuation.scaling import ScaleRunner
from slorouter.autoscale.scaler import Scaler


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # "gauge" | "counter"
    help: str
    labels: tuple[str, ...]
    samples: tuple[tuple[tuple[str, ...], float], ...]  # (label values, value)


_PER_TIER: tuple[tuple[str, str, str], ...] = (
    ("desired_servers", "gauge", "Servers the tier should have (the scaler's decision)."),
    ("current_servers", "gauge", "Servers of the tier in the router's backend set."),
    ("needed_servers", "gauge", "Servers the tier's load needs at the target utilisation."),
    ("headroom_servers", "gauge", "Spare servers at the target utilisation (negative: short)."),
    ("queued_requests", "gauge", "Requests of the tier waiting in the router queue."),
    ("attainment_ratio", "gauge", "Share of the tier's requests that met their SLO (window)."),
    ("arrival_rate", "gauge", "Arrival rate of the tier (EWMA level) [req/s]."),
    ("sizing_rate", "gauge", "Rate sized for: max(level, forecast one delay ahead) [req/s]."),
    ("cost_server_seconds", "gauge", "Fluid server-seconds per request at the tier's pace."),
    ("deferrals_total", "counter", "On-time requests that fit on no server of their tier or up."),
)


def autoscale_families(
    scaler: Scaler, now: float, *, advisory: bool, webhook: Mapping[str, int] | None = None
) -> list[Family]:
    samples: dict[str, list[tuple[tuple[str, ...], float]]] = {key: [] for key, _, _ in _PER_TIER}
    decisions: list[tuple[tuple[str, ...], float]] = []
    for name, st in scaler.tiers.items():
        values = {
            "desired_servers": float(st.desired if st.desired is not None else st.current),
            "current_servers": float(st.current),
            "needed_servers": float(st.need),
            "headroom_servers": st.headroom,
            "queued_requests": float(st.queued),
            "attainment_ratio": st.attainment.value(now),
            "arrival_rate": st.rate.level,
            "sizing_rate": st.sizing_rate,
            "cost_server_seconds": None if math.isinf(st.cost_s) else st.cost_s,
            "deferrals_total": float(st.deferrals),
        }
        for key, v in values.items():
            if v is not None:
                samples[key].append(((name,), float(v)))
        for kind in ("out", "in", "move"):
            decisions.append(((name, kind), float(st.counts.get(kind, 0))))
    out = [
        Family(f"slorouter_autoscale_{key}", kind, help_, ("tier",), tuple(samples[key]))
        for key, kind, help_ in _PER_TIER
    ]
    out.append(
        Family(
            "slorouter_autoscale_decisions_total",
            "counter",
            "Decisions by kind.",
            ("tier", "kind"),
            tuple(decisions),
        )
    )
    out.append(
        Family(
            "slorouter_autoscale_advisory",
            "gauge",
            "1 when the scaler only advises (logs and gauges), 0 when it acts.",
            (),
            (((), 1.0 if advisory else 0.0),),
        )
    )
    if webhook is not None:
        out.append(
            Family(
                "slorouter_autoscale_webhook_total",
                "counter",
                "Webhook deliveries by result (retried: attempts after the first).",
                ("result",),
                tuple(((k,), float(v)) for k, v in sorted(webhook.items())),
            )
        )
    return out


def to_metric(f: Family) -> Metric:
    """A :class:`Family` as a ``prometheus_client`` metric family."""
    m: GaugeMetricFamily | CounterMetricFamily
    if f.kind == "counter":
        m = CounterMetricFamily(f.name, f.help, labels=list(f.labels))
    else:
        m = GaugeMetricFamily(f.name, f.help, labels=list(f.labels))
    for labels, v in f.samples:
        m.add_metric(list(labels), v)
    return m


class AutoscaleMetrics:
    def __init__(self, runner: ScaleRunner) -> None:
        self.runner = runner

    def _families(self, now: float) -> list[Family]:
        r = self.runner
        return autoscale_families(r.scaler, now, advisory=not r.acting, webhook=r.webhook_stats())

    def describe(self) -> list[Metric]:
        return [to_metric(Family(f.name, f.kind, f.help, f.labels, ())) for f in self._families(0.0)]

    def collect(self) -> list[Metric]:
        if not self.runner.leading:  # several router processes: the leader's scaler speaks for all
            return []
        return [to_metric(f) for f in self._families(self.runner.clock.now())]
