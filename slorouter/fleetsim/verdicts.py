"""Each finished request's SLO verdict in the fleet simulator, into the run's records.

Per-token deadlines are checked exactly, from the engine's step end times and each
request's token segments (:mod:`slorouter.engine.model`), with :mod:`slojudge`'s predicate
(the router's and the load generator's): a request's on-schedule tokens, its verdict and
its service gain (:func:`~slorouter.fleetsim.metrics.summarize`). A deadline is judged by
the finish time; a multi-call workflow when its last call is done.
"""

from __future__ import annotations

import math
from typing import Any

import slojudge
from slorouter.engine.results import Segment
from slorouter.fleetsim.metrics import OK, Records, on_time_tokens
from slorouter.fleetsim.workload import Workload
from slorouter.values import SloClass

BACKLOG_GRACE_S = 10.0  # see Verdicts.record: best-effort work started this long after arrivals end


class Verdicts:
    """Judges the requests of one workload into ``records``; ``call_arrival[rid]`` is when
    the request was sent (a released workflow call: its release, not its workflow's start)."""

    def __init__(self, wl: Workload, records: Records, call_arrival: list[float]) -> None:
        self.wl, self.records, self.call_arrival = wl, records, call_arrival

    def record(
        self,
        rid: int,
        segs: tuple[Segment, ...],
        first_step: int,
        finished_at: float,
        ends: Any,
    ) -> None:
        rec, wl = self.records, self.wl
        dslo_met = rec.dslo
        rec.status[rid] = OK
        rec.finished_at[rid] = finished_at
        arrival = self.call_arrival[rid]
        first = ends[first_step]
        ttft = first - arrival
        rec.ttft[rid] = ttft
        n_out = wl.output[rid]
        tpot_mean = (finished_at - first) / (n_out - 1) if n_out > 1 else math.nan
        rec.tpot[rid] = tpot_mean
        slo = wl.variant[rid].slo
        cls = slo.slo_class
        if cls is SloClass.LATENCY and slo.ttft_s is not None:
            tpot = slo.tpot_s or 0.0
            due0 = arrival + slo.ttft_s
            rec.on_time[rid] = on_time_tokens(ends, segs, due0, tpot)
            rec.first_on_time[rid] = slojudge.on_time(first - due0, tpot, 0)
            dslo_met[rid] = rec.on_time[rid] >= n_out
            rec.ttft_miss[rid] = ttft > slo.ttft_s + 1e-9
            rec.mean_ok[rid] = ttft <= slo.ttft_s + 1e-9 and (n_out < 2 or tpot_mean <= tpot + 1e-9)
        elif slo.deadline_s is not None:
            ok = slojudge.in_time(finished_at, self.due(rid))
            dslo_met[rid] = rec.mean_ok[rid] = ok
        else:
            # best effort has no SLO, but a rate at which its work piles up in the router
            # queue is not sustainable: one first dispatched more than BACKLOG_GRACE_S after
            # the last arrival (served only because arrivals stopped) is not counted good
            started = arrival + rec.wait[rid]
            ok = not started > wl.arrival[-1] + BACKLOG_GRACE_S
            dslo_met[rid] = rec.mean_ok[rid] = ok
            rec.backlog[rid] = not ok

    def due(self, rid: int) -> float:
        """The deadline request ``rid`` is judged by: its workflow's (a multi-call
        workflow: from its first call's arrival), else its arrival + its tier's."""
        wl = self.wl
        if wl.has_workflows and wl.variant[rid].slo.slo_class is SloClass.WORKFLOW:
            return wl.arrival[wl.unit[rid]] + (wl.deadline_s[rid] or 0.0)
        return self.call_arrival[rid] + (wl.variant[rid].slo.deadline_s or 0.0)

    def judge_workflows(self) -> None:
        """A multi-call workflow is met when every call finished ok by its deadline: the
        verdict goes on its first call (the unit the summary counts, fleet_metrics)."""
        rec, wl = self.records, self.wl
        calls: dict[int, list[int]] = {}
        for r, u in enumerate(wl.unit):
            calls.setdefault(u, []).append(r)
        for u, rs in calls.items():
            if wl.variant[u].slo.slo_class is not SloClass.WORKFLOW:
                continue
            met = all(rec.status[r] == OK and rec.dslo[r] for r in rs)
            rec.dslo[u] = rec.mean_ok[u] = met
