"""``polyserve``: multi-SLO routing with tier bins and lazy upward overflow (PolyServe).

* **Bins.** Every server belongs to the bin of its tier (``Backend.tier``); bins are
  keyed by TPOT (tiers with the same TPOT share a bin; deadline and best-effort tiers
  have their own, loosest bins) and ordered tight → loose.
* **Own bin first.** A request goes to a *feasible* server of its own bin
  (:mod:`slorouter.policy.feasibility`): with ``placement: pack`` the most loaded one
  (largest predicted ``step / τ_host`` after placement — so emptied servers can be
  given back), with ``spread`` the least loaded; ``auto`` = pack when autoscaling is on,
  else spread. Among the first ``interference_checks`` candidates, the first whose
  residents have the slack to absorb this request's prefill goes first.
* **Lazy, upward-only overflow.** Only if no server of its bin is feasible, the next
  tighter bin is tried, then the next; there every check uses the host's tighter TPOT.
  Never downward. Deadline/workflow requests scan bins from the loosest to the
  tightest (just-enough capacity: the loosest server that still meets the deadline).
* **Nothing feasible** → :class:`Defer` (the router queue orders by slack and retries on
  completions), with ``retry_at`` = the moment its TTFT can no longer be met even on an
  idle server. Once that moment has passed the request is *late*: ``Reject(429,
  Retry-After)`` if its tier says ``reject_when_late``, else it is served best effort —
  placed only where it breaks no one's TPOT, TTFT checks dropped.

Params: ``placement`` (pack|spread|auto), ``kv_estimate`` (peak|current), ``headroom``
(usable fraction of TPOT, default 1.0), ``interference_checks`` (default 4; 0 = off),
``overflow`` (default true), ``fallbacks`` (extra ranked servers for failover, default 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from slorouter.policy.base import BasePolicy, Params, PolicyContext
from slorouter.policy.feasibility import (
    INF,
    FeasibilityParams,
    Need,
    assess,
    earliest_first_token,
    prefer_fitting,
    tightest_tpot,
)
from slorouter.state.backends import BackendSet
from slorouter.state.snapshot import Snapshot
from slorouter.values import Decision, Defer, Dispatch, Reject, RequestInfo, SloClass, Tier

_BE = 1e12  # tightness of best-effort / tier-less bins


def tier_tightness(t: Tier | None) -> float:
    if t is None:
        return _BE
    s = t.slo.tightness
    return _BE if math.isinf(s) else s


class _Bins:
    """Healthy backends grouped by the tightness of their tier, tight first."""

    __slots__ = ("bins", "taus", "tpot_by_tier")

    def __init__(self, backends: BackendSet, healthy: frozenset[str]) -> None:
        groups: dict[float, list[str]] = {}
        for b in backends.backends:
            if b.id in healthy:
                groups.setdefault(tier_tightness(backends.tier_by_name.get(b.tier)), []).append(b.id)
        self.taus = sorted(groups)
        self.bins = [tuple(groups[t]) for t in self.taus]
        self.tpot_by_tier = {
            t.name: (t.slo.tpot_s if t.slo.tpot_s is not None else INF) for t in backends.tiers
        }


class PolyServe(BasePolicy):
    kind = "polyserve"

    def __init__(
        self,
        placement: str = "spread",
        fp: FeasibilityParams | None = None,
        overflow: bool = True,
        fallbacks: int = 2,
    ) -> None:
        self.pack = placement == "pack"
        self.fp = fp or FeasibilityParams()
        self.overflow = overflow
        self.fallbacks = fallbacks
        self._bins: _Bins | None = None
        self._bins_key: tuple[int, int] = (0, 0)

    def _get_bins(self, snap: Snapshot) -> _Bins:
        key = (id(snap.backends), id(snap.healthy))
        if self._bins is None or key != self._bins_key:
            self._bins = _Bins(snap.backends, snap.healthy)
            self._bins_key = key
        return self._bins

    def _candidate_bins(self, req: RequestInfo, bins: _Bins) -> list[int]:
        own = tier_tightness(req.tier)
        allowed = [i for i, t in enumerate(bins.taus) if t <= own]
        allowed.reverse()  # loosest allowed first: own bin, then tighter ones
        if not self.overflow:
            allowed = allowed[:1] if allowed and bins.taus[allowed[0]] == own else []
        return allowed

    def _scan(self, need: Need, bins: _Bins, order: list[int], snap: Snapshot) -> list[str]:
        loads = snap.loads
        lat = snap.latency
        fp = self.fp
        for i in order:
            tau_bin = bins.taus[i]
            host = tau_bin if tau_bin < 1e3 else INF
            found: list[tuple[float, str]] = []
            for bid in bins.bins[i]:
                load = loads[bid]
                lin = lat.linear(bid)
                lim = lat.limits(bid)
                tau = host
                if load.tier_counts and host >= 1e3:
                    tau = tightest_tpot(load, bins.tpot_by_tier)
                s = assess(need, load, lin, lim, tau, fp)
                if s < 0:
                    continue
                if tau >= 1e3 and host >= 1e3:
                    # best-effort bin: no TPOT to fill, rank by batch
                    util = (len(load.residents) + 1) / lim.max_num_seqs
                else:
                    t = tau if tau < need.tpot else need.tpot
                    util = s / t
                found.append((-util if self.pack else util, bid))
            if found:
                found.sort()
                ranked = [b for _, b in found]
                if fp.interference_checks and len(ranked) > 1:
                    ranked = prefer_fitting(ranked, need, loads, lat, snap.now, fp.interference_checks)
                return ranked[: 1 + self.fallbacks]
        return []

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        if not snapshot.healthy:
            return self.no_backend(snapshot)
        bins = self._get_bins(snapshot)
        order = self._candidate_bins(request, bins)
        if not order:
            return Reject(503, f"no healthy backend serves tier {request.tier.name!r} or a tighter one")
        now = snapshot.now
        late = self._is_late(request, snapshot, bins, order, now)
        need = Need(request, now, late, self.fp.kv_estimate)
        if late and request.tier.reject_when_late:
            return Reject(429, "the TTFT deadline can no longer be met", retry_after_s=1.0)
        chosen = self._scan(need, bins, order, snapshot)
        if chosen:
            return Dispatch(tuple(chosen), "late, best effort" if late else "feasible")
        if late:
            return Defer("late: waiting for a server it does not slow down")
        return Defer("no feasible server", retry_at=self._late_at(request, snapshot, bins, order))

    def _late_at(self, req: RequestInfo, snap: Snapshot, bins: _Bins, order: list[int]) -> float | None:
        """When the request's SLO stops being attainable even on an idle server."""
        return late_at(req, snap, bins.bins[order[-1]][0])

    def _is_late(self, req: RequestInfo, snap: Snapshot, bins: _Bins, order: list[int], now: float) -> bool:
        at = self._late_at(req, snap, bins, order)
        return at is not None and now > at


def late_at(req: RequestInfo, snap: Snapshot, bid: str) -> float | None:
    """The time after which ``req`` cannot meet its SLO even alone on backend ``bid``
    (None: never, e.g. best effort)."""
    slo = req.tier.slo
    if slo.slo_class is SloClass.BEST_EFFORT:
        return None
    lat = snap.latency
    lin = lat.linear(bid)
    first = earliest_first_token(req.prompt_tokens, lin, lat.limits(bid))
    if slo.slo_class is SloClass.LATENCY:
        dl = req.ttft_deadline
        return None if math.isinf(dl) else dl - first
    dl_abs = req.deadline_at
    if dl_abs is None and slo.deadline_s is not None:
        dl_abs = req.arrival + slo.deadline_s
    if dl_abs is None:
        return None
    idle = lin.at(1, req.prompt_tokens + req.output_bound)
    return dl_abs - first - max(0, req.output_bound - 1) * idle


def make_polyserve(params: Mapping[str, Any], ctx: PolicyContext) -> PolyServe:
    p = Params(params)
    placement = p.choice("placement", "auto", ("pack", "spread", "auto"))
    if placement == "auto":
        placement = "pack" if ctx.autoscaling else "spread"
    fp = FeasibilityParams(
        kv_estimate=p.choice("kv_estimate", "peak", ("peak", "current")),
        headroom=p.number("headroom", 1.0, lo=0.1, hi=2.0),
        interference_checks=p.integer("interference_checks", 4, lo=0),
        catchup_tokens=p.number("catchup_tokens", 32.0, lo=1.0),
    )
    overflow = p.boolean("overflow", True)
    fallbacks = p.integer("fallbacks", 2, lo=0)
    p.done()
    return PolyServe(placement, fp, overflow, fallbacks)
