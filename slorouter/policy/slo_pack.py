"""``slo-pack``: an AIBrix-like SLO-aware baseline — no tiers, no bins.

Every healthy server is a candidate; a server is feasible for a request by the same
checks as ``polyserve`` (:mod:`slorouter.policy.feasibility`), judged against the
tightest TPOT among the server's residents and the request's own. Among feasible servers
the most loaded one (``placement: pack``) or the least loaded (``spread``; ``auto`` =
pack with autoscaling, else spread). Nothing feasible → :class:`Defer` (the router's
slack-ordered queue retries it); late requests are rejected (429) when their tier says
``when_late: reject`` (the default), else served best effort where they slow no one down.

What it lacks compared with ``polyserve``: servers are not reserved by tightness, so a
20 ms request may land on a server already full of 100 ms work (which then caps the
whole server at the 20 ms batch), and loose work spreads everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slorouter.policy.base import BasePolicy, Params, PolicyContext
from slorouter.policy.bins import late_at
from slorouter.policy.feasibility import (
    INF,
    FeasibilityParams,
    Need,
    assess,
    hopeless,
    idle_server,
    prefer_fitting,
    read_params,
    tightest_tpot,
)
from slorouter.state.backends import Backend
from slorouter.state.snapshot import Snapshot
from slorouter.values import Decision, Defer, Dispatch, Reject, RequestInfo


class SloPack(BasePolicy):
    kind = "slo-pack"

    def __init__(self, placement: str = "spread", fp: FeasibilityParams | None = None, fallbacks: int = 2):
        self.pack = placement == "pack"
        self.fp = fp or FeasibilityParams()
        self.fallbacks = fallbacks
        self._tpots: dict[str, float] = {}
        self._tpots_key = 0

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        pool = snapshot.eligible(None)
        if not pool:
            return self.no_backend(snapshot)
        if snapshot.fleet[0] != self._tpots_key:
            self._tpots = {
                t.name: (t.slo.tpot_s if t.slo.tpot_s is not None else INF) for t in snapshot.backends.tiers
            }
            self._tpots_key = snapshot.fleet[0]
        at = late_at(request, snapshot, pool[0].id)
        late = at is not None and snapshot.now > at
        if late and request.tier.rejects_late and at is not None and at >= request.arrival:
            # late by waiting (late on arrival is served best effort: retrying would not help)
            # the admission core answers it 429 with the predicted drain time as Retry-After
            return Reject(429, "the TTFT deadline can no longer be met")
        need = Need(request, snapshot.now, late, self.fp.kv_estimate)
        ranked = self._rank(need, pool, snapshot)
        if ranked:
            return Dispatch(tuple(ranked[: 1 + self.fallbacks]), "late, best effort" if late else "feasible")
        if not late and hopeless(request, (b.id for b in pool), snapshot.latency, self.fp, 1.0):
            # no server meets its TPOT even alone: waiting for capacity cannot help
            late = True
            ranked = self._rank(
                Need(request, snapshot.now, True, self.fp.kv_estimate, hopeless=True), pool, snapshot
            )
            if ranked:
                reason = "best effort: its TPOT is below every server's idle step"
                return Dispatch(tuple(ranked[: 1 + self.fallbacks]), reason)
        if late:
            idle = idle_server((b.id for b in pool), snapshot.loads)
            if idle is not None:
                return Dispatch((idle,), "late, best effort on an idle server")
            return Defer("late: waiting for a server it does not slow down")
        return Defer("no feasible server", retry_at=at)

    def _rank(self, need: Need, pool: Sequence[Backend], snapshot: Snapshot) -> list[str]:
        """Feasible servers of ``pool``, most (pack) or least (spread) loaded first."""
        loads, lat, fp = snapshot.loads, snapshot.latency, self.fp
        found: list[tuple[float, str]] = []
        for b in pool:
            load = loads[b.id]
            lin, lim = lat.linear(b.id), lat.limits(b.id)
            tau = tightest_tpot(load, self._tpots) if load.tier_counts else INF
            s = assess(need, load, lin, lim, tau, fp)
            if s < 0:
                continue
            t = min(tau, need.tpot)
            util = s / t if t < INF else (load.running + 1) / lim.max_num_seqs
            found.append((-util if self.pack else util, b.id))
        found.sort()
        ranked = [x for _, x in found]
        if fp.interference_checks and len(ranked) > 1:
            ranked = prefer_fitting(ranked, need, loads, lat, snapshot.now, fp.interference_checks)
        return ranked


def make_slo_pack(params: Mapping[str, Any], ctx: PolicyContext) -> SloPack:
    p = Params(params)
    placement, fp = read_params(p, ctx)
    fallbacks = p.integer("fallbacks", 2, lo=0)
    p.done()
    return SloPack(placement, fp, fallbacks)
