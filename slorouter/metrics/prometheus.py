"""Prometheus text exposition (format 0.0.4), written by hand: the metric set is
small and fixed, and the hot path only bumps plain numbers.

Counters and histograms are fed by the tracker's outcome listener (once per
finished request); gauges are read from the tracker at scrape time.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence

from slorouter.state.tracker import Tracker
from slorouter.values import Outcome, Status

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in pairs) + "}"


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


class Histogram:
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

    def observe_many(self, values: Iterable[float]) -> None:
        for v in values:
            self.observe(v)

    def lines(self, name: str, labels: Sequence[tuple[str, str]]) -> list[str]:
        out = []
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append(f"{name}_bucket{_labels([*labels, ('le', _num(b))])} {acc}")
        acc += self.counts[-1]
        out.append(f"{name}_bucket{_labels([*labels, ('le', '+Inf')])} {acc}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


class RouterMetrics:
    """Everything ``GET /metrics`` shows. Register :meth:`observe` as a tracker listener."""

    def __init__(self, tracker: Tracker, extra: Callable[[], list[str]] | None = None) -> None:
        self.tracker = tracker
        self.requests: dict[tuple[str, str], int] = {}
        self.dslo_met: dict[str, int] = {}
        self.output_tokens: dict[str, int] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.ttft: dict[str, Histogram] = {}
        self.itl: dict[str, Histogram] = {}
        self.e2e: dict[str, Histogram] = {}
        self._extra = extra

    def observe(self, o: Outcome) -> None:
        key = (o.tier, o.status.value)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.output_tokens[o.tier] = self.output_tokens.get(o.tier, 0) + o.output_tokens
        self.prompt_tokens[o.tier] = self.prompt_tokens.get(o.tier, 0) + o.prompt_tokens
        if o.status is Status.OK and o.max_lateness_s is not None and o.max_lateness_s <= 0:
            self.dslo_met[o.tier] = self.dslo_met.get(o.tier, 0) + 1
        ttft = o.ttft_s
        if ttft is not None:
            self.ttft.setdefault(o.tier, Histogram(TTFT_BUCKETS)).observe(ttft)
        if o.step_samples:
            h = self.itl.setdefault(o.tier, Histogram(ITL_BUCKETS))
            for gap, _b, _kv in o.step_samples:
                h.observe(gap)
        if o.status is Status.OK:
            self.e2e.setdefault(o.tier, Histogram(E2E_BUCKETS)).observe(o.finished_at - o.arrival)

    def render(self) -> str:
        t = self.tracker
        lines: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")

        family("slorouter_requests_total", "counter", "Finished requests by tier and outcome.")
        for (tier, status), n in sorted(self.requests.items()):
            lines.append(f"slorouter_requests_total{_labels([('tier', tier), ('status', status)])} {n}")
        family("slorouter_dslo_met_total", "counter", "Requests that met every per-token deadline.")
        for tier, n in sorted(self.dslo_met.items()):
            lines.append(f"slorouter_dslo_met_total{_labels([('tier', tier)])} {n}")
        family("slorouter_output_tokens_total", "counter", "Output tokens of finished requests.")
        for tier, n in sorted(self.output_tokens.items()):
            lines.append(f"slorouter_output_tokens_total{_labels([('tier', tier)])} {n}")
        family("slorouter_prompt_tokens_total", "counter", "Prompt tokens of finished requests.")
        for tier, n in sorted(self.prompt_tokens.items()):
            lines.append(f"slorouter_prompt_tokens_total{_labels([('tier', tier)])} {n}")

        family("slorouter_backend_inflight_requests", "gauge", "Requests running on a backend.")
        family_rows: list[str] = []
        for b in t.backends.backends:
            load = t.loads[b.id]
            lab = [("backend", b.id), ("tier", b.tier)]
            lines.append(f"slorouter_backend_inflight_requests{_labels(lab)} {load.running}")
            family_rows.append(
                f"slorouter_backend_inflight_tokens{_labels([*lab, ('kind', 'prompt')])} {load.prompt_tokens}"
            )
            family_rows.append(
                f"slorouter_backend_inflight_tokens{_labels([*lab, ('kind', 'output')])} {load.output_tokens}"
            )
        family(
            "slorouter_backend_inflight_tokens", "gauge", "Tokens held by in-flight requests on a backend."
        )
        lines.extend(family_rows)
        family("slorouter_backend_healthy", "gauge", "1 when a backend may receive new requests.")
        healthy = t.health.healthy
        for b in t.backends.backends:
            lines.append(f"slorouter_backend_healthy{_labels([('backend', b.id)])} {int(b.id in healthy)}")
        family("slorouter_queue_waiting", "gauge", "Requests waiting in the router queue.")
        for tr in t.backends.tiers:
            lines.append(f"slorouter_queue_waiting{_labels([('tier', tr.name)])} {t.queued.get(tr.name, 0)}")
        family(
            "slorouter_model_ttft_extra_seconds",
            "gauge",
            "Learned time to first token beyond the step model, at the backend's current load.",
        )
        for b in t.backends.backends:
            extra = t.latency.limits(b.id).ttft_extra(t.loads[b.id].running)
            lines.append(f"slorouter_model_ttft_extra_seconds{_labels([('backend', b.id)])} {extra:.6g}")

        for name, hists, help_ in (
            ("slorouter_ttft_seconds", self.ttft, "Time to first token, from arrival at the router."),
            ("slorouter_itl_seconds", self.itl, "Gap between consecutive streamed chunks (one engine step)."),
            ("slorouter_e2e_seconds", self.e2e, "Arrival to last byte, successful requests."),
        ):
            family(name, "histogram", help_)
            for tier, h in sorted(hists.items()):
                lines.extend(h.lines(name, [("tier", tier)]))
        if self._extra is not None:
            lines.extend(self._extra())
        return "\n".join(lines) + "\n"
