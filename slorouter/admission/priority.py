"""The admission queue's ordering key: a request's latest useful start.

``priority`` gives a request's **latest useful start**: the time by which it must
be dispatched to still meet its SLO, i.e. its slack is ``priority - now``.

* ``latency``: ``ttft_deadline - prefill estimate`` (estimated on the fleet's first
  eligible backend, or 0 without one);
* ``deadline`` / ``workflow``: ``deadline_at - (prefill + output_bound · step estimate)``
  (the service-gain density idea of Tempo: work that must start soonest first; between
  equal keys the heavier tier, then the earlier arrival);
* ``best_effort``: ``+inf`` (after every SLO request, FIFO among themselves).
"""

from __future__ import annotations

import math

from slorouter.state.snapshot import Snapshot
from slorouter.values import RequestInfo, SloClass


def priority(request: RequestInfo, snapshot: Snapshot | None = None, backend_id: str | None = None) -> float:
    """Latest useful start time of ``request`` (lower = more urgent); see the module doc.

    ``snapshot`` (a :class:`~slorouter.state.snapshot.Snapshot`) refines the estimate
    with the latency model of ``backend_id`` (default: the first eligible backend)."""
    slo = request.tier.slo
    cls = slo.slo_class
    if cls is SloClass.BEST_EFFORT:
        return math.inf
    prefill = 0.0
    step = slo.tpot_s or 0.0
    if snapshot is not None:
        lat = snapshot.latency
        bid = backend_id
        if bid is None:
            pool = snapshot.eligible(None)
            bid = pool[0].id if pool else None
        if bid is not None:
            prefill = lat.prefill_time(bid, request.prompt_tokens)
            if not step:
                step = lat.step_time(bid, 1, request.prompt_tokens)
    if cls is SloClass.LATENCY:
        return request.ttft_deadline - prefill
    if request.deadline_at is not None:
        return request.deadline_at - prefill - request.output_bound * step
    if slo.deadline_s is not None:
        return request.arrival + slo.deadline_s - prefill - request.output_bound * step
    return request.ttft_deadline - prefill
