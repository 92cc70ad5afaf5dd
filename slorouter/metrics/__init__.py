"""What ``GET /metrics`` shows, in the Prometheus exposition format written by
``prometheus_client``. One collector per part of the router, each reading that part's
own counters when the endpoint is scraped (nothing is recorded per token, and nothing
but the tracker's outcome listeners run per request):

=======================================  ===========================================================
:class:`~.requests.RequestMetrics`       finished requests, tokens, TTFT/ITL/E2E histograms (per
                                         tier); in-flight load, health, queue, learned TTFT (now)
:class:`~.gain.GainMetrics`              SLO met, deadline met/missed, service gain (per tier), judged
                                         by :mod:`slojudge` when a request finishes
:class:`~.admission.AdmissionMetrics`    requests shed (429) by tier and reason, queue wait histograms
:class:`~.health.HealthMetrics`          probes, circuit breakers, drains, ejections per backend
:class:`~.forwarding.ForwardingMetrics`  failovers, skipped failovers, re-sends, dropped slow clients
:class:`~.control.ControlMetrics`        config reloads, router-wide drain
:class:`~.sync.SyncMetrics`              the shared load picture: store, peers, leader; the
                                         fleet view (leader only)
=======================================  ===========================================================

The composition root registers them in one :class:`CollectorRegistry` per application
(never the library's global default registry: several routers may share a process, as
the tests do). The metric families are listed in ``docs/metrics.md``.
"""

from __future__ import annotations

from aiohttp.typedefs import Handler
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.registry import Collector, CollectorRegistry


def build_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of ``collectors``; two exposing one metric name is an error here."""
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return registry


def scrape_handler(registry: CollectorRegistry) -> Handler:
    """The ``GET /metrics`` handler: the text format (``text/plain; version=0.0.4``) or
    OpenMetrics, as the scraper's ``Accept`` asks; compressed when it accepts that."""
    return make_aiohttp_handler(registry)
