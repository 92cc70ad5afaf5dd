"""The scaler's Prometheus metrics, as metric families (name, type, help, samples), kept
apart from the exposition so they fit a hand-written ``/metrics`` (:func:`text_lines`)
or a ``prometheus_client`` custom collector alike (one family = one
``GaugeMetricFamily`` / ``CounterMetricFamily``).

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
by ``result`` (delivered / retried / failed / dropped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slorouter.autoscale.scaler import Scaler

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # "gauge" | "counter"
    help: str
    samples: tuple[tuple[Labels, float], ...]


def autoscale_families(
    scaler: Scaler, now: float, *, advisory: bool, webhook: Mapping[str, int] | None = None
) -> list[Family]:
    per_tier: dict[str, tuple[str, str, list[tuple[Labels, float]]]] = {
        "desired_servers": ("gauge", "Servers the tier should have (the scaler's decision).", []),
        "current_servers": ("gauge", "Servers of the tier in the router's backend set.", []),
        "needed_servers": ("gauge", "Servers the tier's load needs at the target utilisation.", []),
        "headroom_servers": ("gauge", "Spare servers at the target utilisation (negative: short).", []),
        "queued_requests": ("gauge", "Requests of the tier waiting in the router queue.", []),
        "attainment_ratio": ("gauge", "Share of the tier's requests that met their SLO (window).", []),
        "arrival_rate": ("gauge", "Arrival rate of the tier (EWMA level) [req/s].", []),
        "sizing_rate": ("gauge", "Rate sized for: max(level, forecast one delay ahead) [req/s].", []),
        "cost_server_seconds": ("gauge", "Fluid server-seconds per request at the tier's pace.", []),
        "deferrals_total": (
            "counter",
            "On-time requests that fit on no server of their tier or tighter.",
            [],
        ),
    }
    decisions: list[tuple[Labels, float]] = []
    for name, st in scaler.tiers.items():
        lab: Labels = (("tier", name),)
        att = st.attainment.value(now)
        values = {
            "desired_servers": float(st.desired if st.desired is not None else st.current),
            "current_servers": float(st.current),
            "needed_servers": float(st.need),
            "headroom_servers": st.headroom,
            "queued_requests": float(st.queued),
            "attainment_ratio": att,
            "arrival_rate": st.rate.level,
            "sizing_rate": st.sizing_rate,
            "cost_server_seconds": None if math.isinf(st.cost_s) else st.cost_s,
            "deferrals_total": float(st.deferrals),
        }
        for key, v in values.items():
            if v is not None:
                per_tier[key][2].append((lab, float(v)))
        for kind in ("out", "in", "move"):
            decisions.append(((("tier", name), ("kind", kind)), float(st.counts.get(kind, 0))))
    out = [
        Family(f"slorouter_autoscale_{key}", kind, help_, tuple(samples))
        for key, (kind, help_, samples) in per_tier.items()
    ]
    out.append(
        Family(
            "slorouter_autoscale_decisions_total", "counter", "Scaling decisions by kind.", tuple(decisions)
        )
    )
    out.append(
        Family(
            "slorouter_autoscale_advisory",
            "gauge",
            "1 when the scaler only advises (logs and gauges), 0 when it acts.",
            (((), 1.0 if advisory else 0.0),),
        )
    )
    if webhook is not None:
        out.append(
            Family(
                "slorouter_autoscale_webhook_total",
                "counter",
                "Webhook deliveries by result (retried: attempts after the first).",
                tuple(((("result", k),), float(v)) for k, v in sorted(webhook.items())),
            )
        )
    return out


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def text_lines(families: Sequence[Family]) -> list[str]:
    """The families in the Prometheus text format (0.0.4)."""
    lines: list[str] = []
    for f in families:
        lines.append(f"# HELP {f.name} {f.help}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for labels, v in f.samples:
            lab = "{" + ",".join(f'{k}="{_esc(x)}"' for k, x in labels) + "}" if labels else ""
            lines.append(f"{f.name}{lab} {_num(v)}")
    return lines
