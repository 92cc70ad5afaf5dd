"""The control collector: config reloads and the router-wide drain of the admin
:class:`~slorouter.http.admin.Control`, read at scrape time."""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from slorouter.http.admin import Control


class ControlMetrics:
    def __init__(self, control: Control) -> None:
        self.control = control

    def describe(self) -> list[Metric]:
        return list(_families())

    def collect(self) -> list[Metric]:
        reloads, draining = _families()
        for result, n in sorted(self.control.reloads.items()):
            reloads.add_metric([result], n)
        draining.add_metric([], int(self.control.draining))
        return [reloads, draining]


def _families() -> tuple[CounterMetricFamily, GaugeMetricFamily]:
    return (
        CounterMetricFamily("slorouter_config_reloads", "Config reloads by result.", labels=["result"]),
        GaugeMetricFamily("slorouter_draining", "1 while the router drains (new requests get 503)."),
    )
