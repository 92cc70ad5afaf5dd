"""The health collector: probes, circuit breakers and drains of the
:class:`~slorouter.proxy.health.HealthMonitor`, read at scrape time."""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from slorouter.proxy.health import Circuit, HealthMonitor


class HealthMetrics:
    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor

    def describe(self) -> list[Metric]:
        return list(_families())

    def collect(self) -> list[Metric]:
        circuit, probe_up, drained, ejections = fams = _families()
        for bid, st in sorted(self.monitor.states.items()):
            for c in Circuit:
                circuit.add_metric([bid, c.value], int(st.circuit is c))
            probe_up.add_metric([bid], int(st.probe_up))
            drained.add_metric([bid], int(st.drained))
            ejections.add_metric([bid], st.ejections)
        return list(fams)


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
    return (
        GaugeMetricFamily(
            "slorouter_backend_circuit",
            "Circuit breaker state of a backend (1 for the current state).",
            labels=["backend", "state"],
        ),
        GaugeMetricFamily(
            "slorouter_backend_probe_up", "1 when active probes consider a backend up.", labels=["backend"]
        ),
        GaugeMetricFamily(
            "slorouter_backend_drained", "1 when an operator drained a backend.", labels=["backend"]
        ),
        CounterMetricFamily(
            "slorouter_backend_ejections", "Times a backend left the routable set.", labels=["backend"]
        ),
    )
