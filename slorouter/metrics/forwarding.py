"""The forwarding collector: failovers, re-sends and dropped slow clients counted by
the :class:`~slorouter.proxy.forward.Forwarder`, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from slorouter.proxy.forward import Forwarder

_COUNTERS: tuple[tuple[str, Callable[[Forwarder], int], str], ...] = (
    (
        "slorouter_failovers",
        lambda f: f.retries,
        "Attempts on another backend (failures before the first byte).",
    ),
    (
        "slorouter_failovers_skipped",
        lambda f: f.budget_stops,
        "Failovers not started: the TTFT deadline had passed.",
    ),
    (
        "slorouter_upstream_resends",
        lambda f: f.resends,
        "Requests sent again on a fresh connection: the engine closed an idle pooled one "
        "as the request went out.",
    ),
    ("slorouter_slow_clients", lambda f: f.slow_clients, "Streaming clients dropped for not reading."),
)


class ForwardingMetrics:
    """``forwarder()`` is the running Forwarder, None before the app started (it needs
    the upstream session, made at startup): then the counters are left out."""

    def __init__(self, forwarder: Callable[[], Forwarder | None]) -> None:
        self.forwarder = forwarder

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(name, help_) for name, _read, help_ in _COUNTERS]

    def collect(self) -> list[Metric]:
        f = self.forwarder()
        if f is None:
            return []
        return [CounterMetricFamily(name, help_, value=read(f)) for name, read, help_ in _COUNTERS]
