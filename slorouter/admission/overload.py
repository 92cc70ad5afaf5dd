"""What overload control needs to know of a request: its wait limit, what it costs the
fleet, and how long the queue ahead of it takes to drain (docs/policies.md §9).

Pure functions of a request and a :class:`~slorouter.state.snapshot.Snapshot` (the
latency model's conservative coefficients); the admission core and queue use them, live
and offline alike.

* **Wait limit** (:func:`default_max_wait`, when ``policy.max_queue_wait_s`` is not
  set): how long a request may stay in the router queue before it is answered 429 —
  ``TTFT + 1 s`` for latency tiers, the deadline for deadline and workflow tiers,
  :data:`BEST_EFFORT_WAIT_S` for best-effort tiers (no objective to derive it from).
  A policy that asks for it (``wait_to_workflow_deadline``, ``tempo``) lets a request
  with a later own deadline — a workflow call, whose objective is its workflow's deadline
  (``deadline_at``), while the tier's ``deadline_ms`` is per call — wait until that
  deadline (:func:`workflow_max_wait`); its late rule still sheds it the moment it could
  not make it even on an idle server.
* **Cost** (:func:`cost`): the server-seconds one request takes, the fluid model of
  ``slorouter.fleetsim.bound`` applied to the request itself: on a server that runs at its
  tier's TPOT ``τ``, a step of ``B`` sequences takes ``c0 + B·(c_batch + c_kv·ctx)``
  (``ctx`` = prompt + half the output bound; ``c_batch`` carries the traffic's average
  prefill per output token), so each of its ``bound`` tokens costs
  ``c0/B + c_batch + c_kv·ctx`` with ``B`` the largest batch that still meets ``τ``
  (capped by ``max_num_seqs`` and the KV capacity; best effort: the cap; deadline
  tiers: ``τ = deadline / bound``).
* **Density** (:func:`density_bucket`): ``weight / cost`` — the value a request brings
  per unit of capacity. Under overload the queue serves the densest first and sheds
  the rest; densities within 10 % of each other share a bucket (the cost is an
  estimate), and within a bucket the request with the most slack goes first.
* **Drain time**: the predicted work queued where a request may be served divided by
  the service rate of the servers it may use (one server-second per second each; its
  :class:`~slorouter.values.Scope`), the ``Retry-After`` of a 429.
"""

from __future__ import annotations

import math
from typing import Final

from slorouter.state.snapshot import Snapshot
from slorouter.values import RequestInfo, SloClass, Tier

TTFT_MARGIN_S: Final = 1.0  # a latency request may wait its TTFT and this much more
BEST_EFFORT_WAIT_S: Final = 60.0  # the wait limit of a best-effort tier (no objective)
_BUCKET: Final = math.log(1.1)  # densities within 10 % share a bucket


def default_max_wait(tier: Tier) -> float:
    """The longest a request of ``tier`` waits in the router queue (see module docs)."""
    slo = tier.slo
    if slo.slo_class is SloClass.LATENCY and slo.ttft_s is not None:
        return slo.ttft_s + TTFT_MARGIN_S
    if slo.deadline_s is not None:
        return slo.deadline_s
    if slo.ttft_s is not None:
        return slo.ttft_s + TTFT_MARGIN_S
    return BEST_EFFORT_WAIT_S


def workflow_max_wait(request: RequestInfo) -> float:
    """:func:`default_max_wait` of the request's tier, or the time from its arrival to its
    own deadline (``deadline_at``: a workflow call's is its workflow's) if that is longer."""
    w = default_max_wait(request.tier)
    dl = request.deadline_at
    if dl is not None and request.tier.slo.slo_class is not SloClass.BEST_EFFORT:
        w = max(w, dl - request.arrival)
    return w


def cost(request: RequestInfo, snapshot: Snapshot) -> float:
    """Predicted server-seconds ``request`` takes (see module docs); 0 without an
    eligible backend to predict with."""
    pool = snapshot.eligible(None)
    if not pool:
        return 0.0
    bid = pool[0].id
    lin = snapshot.latency.linear(bid)
    lim = snapshot.latency.limits(bid)
    b = max(1, request.output_bound)
    p = request.prompt_tokens
    per_seq = lin.c_batch_s + lin.c_kv_s * (p + b / 2)
    slo = request.tier.slo
    tau = slo.tpot_s
    if tau is None and slo.deadline_s is not None:
        tau = slo.deadline_s / b
    cap = float(lim.max_num_seqs)
    if p + b > 0:
        cap = min(cap, lim.kv_capacity_tokens / (p + b))
    if tau is None:
        batch = cap
    elif per_seq > 0:
        batch = min(cap, (tau - lin.c0_s) / per_seq)
    else:
        batch = cap
    batch = max(1.0, batch)
    return b * (lin.c0_s / batch + per_seq)


def density_bucket(request: RequestInfo, cost_s: float) -> int:
    """``weight / cost`` on a log scale, 10 % per bucket (higher = more valuable)."""
    d = request.tier.weight / max(cost_s, 1e-9)
    return math.floor(math.log(d) / _BUCKET)
