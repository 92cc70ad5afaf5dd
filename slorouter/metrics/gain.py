"""The SLO collector: the verdict and service gain of every finished request
(:mod:`slorouter.judge`, i.e. :mod:`slojudge`), per tier.

:meth:`GainMetrics.observe` is a tracker outcome listener (once per finished request);
the collector reads its own counters when ``/metrics`` is scraped:

* ``slorouter_dslo_met_total{tier}`` — requests that met their SLO: every per-token
  deadline (latency tiers), finished ``ok`` by the deadline (deadline tiers; a workflow
  call by its workflow's deadline). Best effort has no SLO and is never counted.
* ``slorouter_deadline_met_total{tier,class}`` / ``slorouter_deadline_missed_total`` —
  requests with a deadline (deadline and workflow classes, and latency tiers that also
  have one), by whether they finished ``ok`` by it; rejected, failed and cancelled
  requests are misses.
* ``slorouter_service_gain_total{tier}`` — service gain of finished requests; a workflow
  call is credited when it finishes in time, and
  ``slorouter_service_gain_forfeited_total{tier}`` takes back a workflow's credit when a
  later call of it misses. ``gain − forfeited`` is the service gain of the workflows
  whose calls have all finished, exactly as the load generator counts it.
"""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from slojudge import WorkflowLedger
from slorouter.judge import verdict
from slorouter.values import Outcome, SloClass


class GainMetrics:
    """Register :meth:`observe` as a tracker listener and the object in the app's registry."""

    def __init__(self, ledger: WorkflowLedger | None = None) -> None:
        self.met: dict[str, int] = {}
        self.deadline: dict[tuple[str, str, bool], int] = {}  # (tier, class, met) -> requests
        self.gain: dict[str, float] = {}
        self.forfeited: dict[str, float] = {}
        self.ledger = ledger or WorkflowLedger()

    def observe(self, o: Outcome) -> None:
        v = verdict(o)
        req = o.request
        if v is None or req is None:
            return
        cls = req.tier.slo.slo_class
        tier = o.tier
        if v.met and cls is not SloClass.BEST_EFFORT:
            self.met[tier] = self.met.get(tier, 0) + 1
        if v.deadline_met is not None:
            key = (tier, cls.value, v.deadline_met)
            self.deadline[key] = self.deadline.get(key, 0) + 1
        got, lost = v.gain, 0.0
        if cls is SloClass.WORKFLOW and req.workflow_id is not None and req.deadline_at is not None:
            got, lost = self.ledger.call(req.workflow_id, req.deadline_at, v, o.finished_at)
            self.forfeited[tier] = self.forfeited.get(tier, 0.0) + lost
        self.gain[tier] = self.gain.get(tier, 0.0) + got

    def net_gain(self, tier: str) -> float:
        """Service gain of ``tier`` after forfeits (what the load generator reports)."""
        return self.gain.get(tier, 0.0) - self.forfeited.get(tier, 0.0)

    # -- the collector ----------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        return _Families().all()

    def collect(self) -> list[Metric]:
        f = _Families()
        for tier, n in sorted(self.met.items()):
            f.dslo_met.add_metric([tier], n)
        for (tier, cls, met), n in sorted(self.deadline.items()):
            (f.deadline_met if met else f.deadline_missed).add_metric([tier, cls], n)
        for tier, g in sorted(self.gain.items()):
            f.gain.add_metric([tier], g)
        for tier, g in sorted(self.forfeited.items()):
            f.forfeited.add_metric([tier], g)
        return f.all()


class _Families:
    """The families this collector exposes, empty (``describe``) or to be filled (``collect``)."""

    def __init__(self) -> None:
        self.dslo_met = CounterMetricFamily(
            "slorouter_dslo_met",
            "Requests that met their SLO: every per-token deadline (latency), finished by the deadline "
            "(deadline; a workflow call by its workflow's). Best effort is never counted.",
            labels=["tier"],
        )
        self.deadline_met = CounterMetricFamily(
            "slorouter_deadline_met",
            "Requests with a deadline that finished ok by it, by tier and class.",
            labels=["tier", "class"],
        )
        self.deadline_missed = CounterMetricFamily(
            "slorouter_deadline_missed",
            "Requests with a deadline that missed it (late, failed, cancelled or rejected).",
            labels=["tier", "class"],
        )
        self.gain = CounterMetricFamily(
            "slorouter_service_gain",
            "Service gain of finished requests (prompt x1 + output x8 tokens on schedule, x tier weight).",
            labels=["tier"],
        )
        self.forfeited = CounterMetricFamily(
            "slorouter_service_gain_forfeited",
            "Gain of workflow calls taken back when a later call of the workflow missed its deadline.",
            labels=["tier"],
        )

    def all(self) -> list[Metric]:
        return [self.dslo_met, self.deadline_met, self.deadline_missed, self.gain, self.forfeited]
