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
* **Nothing feasible** → first, for a request with an SLO, the same scan with every
  threshold × ``relax`` (default 1.15: the predictions are a conservative quantile, and
  waiting in the queue costs TTFT — a nearly-feasible server now beats a feasible one
  too late); if its TPOT is below every candidate server's predicted step *alone*
  (× ``relax``), waiting cannot help: it is served best effort at once, as a late
  request is; else :class:`Defer` (the router queue orders by slack and retries on
  completions), with ``retry_at`` = the moment its TTFT can no longer be met even on an
  idle server. Once that moment has passed the request is *late*: ``Reject(429,
  Retry-After)`` if its tier says ``reject_when_late``, else it is served best effort —
  placed only where it breaks no one's TPOT, TTFT checks dropped, or on any idle server
  (so a late request is never stranded, whatever the model predicts).

Params: ``placement`` (pack|spread|auto), ``kv_estimate`` (peak|current), ``headroom``
(usable fraction of TPOT, default 1.0), ``interference_checks`` (default 4; 0 = off),
``catchup_tokens`` (default 64), ``overflow`` (default true), ``overflow_headroom``
(share of a tighter host's TPOT budget that overflow may use, default 0.85 — the rest
stays for the host bin's own tier), ``relax`` (default 1.15), ``fallbacks`` (extra ranked
servers for failover, default 2), ``rebalance`` (default true: servers move between bins
as load shifts, :mod:`slorouter.policy.rebalance`), ``rebalance_hold_s`` (default 10).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Final

from slorouter.policy.base import BasePolicy, Params, PolicyContext
from slorouter.policy.binindex import BinIndex, key_of
from slorouter.policy.feasibility import (
    INF,
    FeasibilityParams,
    Need,
    assess,
    earliest_first_token,
    hopeless,
    idle_server,
    prefer_fitting,
    read_params,
    tightest_tpot,
)
from slorouter.policy.rebalance import BinMoves, RebalanceParams
from slorouter.state.backends import BackendSet
from slorouter.state.snapshot import Snapshot
from slorouter.values import Decision, Defer, Dispatch, Outcome, Reject, RequestInfo, SloClass, Tier

_BE = 1e12  # tightness of best-effort / tier-less bins
_INDEX_MIN: Final = 16  # bins larger than this are indexed (see slorouter.policy.binindex)
_REFRESH_PER_DECISION: Final = 4


def tier_tightness(t: Tier | None) -> float:
    if t is None:
        return _BE
    s = t.slo.tightness
    return _BE if math.isinf(s) else s


class _Bins:
    """Healthy backends grouped by the tightness of their tier, tight first."""

    __slots__ = ("bins", "taus", "tiers_of", "tpot_by_tier")

    def __init__(
        self, backends: BackendSet, healthy: frozenset[str], moved: Mapping[str, float] | None = None
    ) -> None:
        groups: dict[float, list[str]] = {}
        moved = moved or {}
        for b in backends.backends:
            if b.id in healthy:
                tau = moved.get(b.id)
                if tau is None:
                    tau = tier_tightness(backends.tier_by_name.get(b.tier))
                groups.setdefault(tau, []).append(b.id)
        self.tiers_of: dict[float, list[str]] = {}
        for t in backends.tiers:
            self.tiers_of.setdefault(tier_tightness(t), []).append(t.name)
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
        overflow_headroom: float = 0.85,
        relax: float = 1.15,
        rebalance: RebalanceParams | None = None,
    ) -> None:
        self.pack = placement == "pack"
        self.fp = fp or FeasibilityParams()
        self.fp_overflow = replace(self.fp, headroom=self.fp.headroom * overflow_headroom)
        self.relax = relax
        self.overflow = overflow
        self.fallbacks = fallbacks
        self._bins: _Bins | None = None
        self._bins_key: tuple[int, int, int, int] = (0, 0, 0, 0)
        rb = rebalance or RebalanceParams()
        self.moves: BinMoves | None = BinMoves(rb) if rb.enabled else None
        self._index: list[BinIndex | None] = []
        self._dirty: set[str] = set()
        self._rr: list[tuple[int, str]] = []  # round-robin refresh order (bin, server)
        self._rr_at = 0
        self._where: dict[str, int] = {}

    # -- private state ---------------------------------------------------------------

    def on_dispatch(self, request: RequestInfo, backend_id: str) -> None:
        self._dirty.add(backend_id)

    def on_finish(self, outcome: Outcome) -> None:
        if outcome.backend is not None:
            self._dirty.add(outcome.backend)

    def _get_bins(self, snap: Snapshot) -> _Bins:
        mv = self.moves
        key = (id(snap.backends), id(snap.healthy), id(snap.loads), mv.moves if mv else 0)
        if self._bins is None or key != self._bins_key:
            bins = self._bins = _Bins(snap.backends, snap.healthy, mv.override(snap.backends) if mv else None)
            self._bins_key = key
            self._index = []
            self._rr = []
            for i, ids in enumerate(bins.bins):
                if bins.taus[i] < 1e3 and self.fp.kv_estimate == "peak" and len(ids) > _INDEX_MIN:
                    ix = BinIndex()
                    ix.build(ids, snap.loads, snap.latency)
                    self._index.append(ix)
                    self._rr.extend((i, b) for b in ids)
                else:
                    self._index.append(None)
            self._where = {b: i for i, ids in enumerate(bins.bins) for b in ids}
            self._dirty.clear()
        else:
            self._refresh(snap)
        return self._bins

    def _refresh(self, snap: Snapshot) -> None:
        loads, lat, index = snap.loads, snap.latency, self._index
        if self._dirty:
            where = self._where
            for bid in self._dirty:
                i = where.get(bid)
                ix = index[i] if i is not None else None
                if ix is not None:
                    ix.update(bid, key_of(loads[bid], lat, bid))
            self._dirty.clear()
        rr = self._rr
        if rr:
            for _ in range(_REFRESH_PER_DECISION):
                self._rr_at = (self._rr_at + 1) % len(rr)
                i, bid = rr[self._rr_at]
                ix = index[i]
                assert ix is not None
                ix.update(bid, key_of(loads[bid], lat, bid))

    def _candidate_bins(self, req: RequestInfo, bins: _Bins) -> list[int]:
        own = tier_tightness(req.tier)
        allowed = [i for i, t in enumerate(bins.taus) if t <= own]
        allowed.reverse()  # loosest allowed first: own bin, then tighter ones
        if not self.overflow:
            allowed = allowed[:1] if allowed and bins.taus[allowed[0]] == own else []
        return allowed

    def _candidates(
        self, i: int, need: Need, host: float, bins: _Bins, fp: FeasibilityParams
    ) -> Iterable[str]:
        """Servers of bin ``i`` to examine, in preference order (all of them, or the
        index's screen: those that may be feasible, most/least loaded first)."""
        ix = self._index[i] if i < len(self._index) else None
        if ix is None:
            return bins.bins[i]
        tau = host if host < need.tpot else need.tpot
        limit = fp.headroom * tau - ix.min_cb - ix.min_ckv * (need.p + need.b)
        return ix.descending(limit) if self.pack else ix.ascending(limit)

    def _scan(
        self, need: Need, bins: _Bins, order: list[int], snap: Snapshot, relax: float = 1.0
    ) -> list[str]:
        loads = snap.loads
        lat = snap.latency
        want = 1 + max(self.fallbacks, self.fp.interference_checks)
        own = tier_tightness_of_need(need)
        for i in order:
            fp = self.fp if bins.taus[i] >= own else self.fp_overflow
            if relax != 1.0:
                fp = replace(fp, headroom=fp.headroom * relax)
            tau_bin = bins.taus[i]
            host = tau_bin if tau_bin < 1e3 else INF
            found: list[tuple[float, str]] = []
            indexed = i < len(self._index) and self._index[i] is not None
            for bid in self._candidates(i, need, host, bins, fp):
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
                if indexed and len(found) >= want:
                    break  # the index gave them in preference order
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
        chosen = (
            self._scan_moving(need, bins, order, snapshot)
            if self.moves
            else self._scan(need, bins, order, snapshot)
        )
        if chosen:
            self._dirty.add(chosen[0])  # its load is about to change (even without on_dispatch)
            return Dispatch(tuple(chosen), "late, best effort" if late else "feasible")
        if not late and self.relax > 1.0 and request.tier.slo.slo_class is not SloClass.BEST_EFFORT:
            chosen = self._scan(need, bins, order, snapshot, self.relax)
            if chosen:
                self._dirty.add(chosen[0])
                return Dispatch(tuple(chosen), "relaxed")
        if not late and hopeless(
            request, (b for i in order for b in bins.bins[i]), snapshot.latency, self.fp, self.relax
        ):
            # no server meets its TPOT even alone: waiting for capacity cannot help
            late = True
            need = Need(request, now, True, self.fp.kv_estimate)
            chosen = self._scan(need, bins, order, snapshot)
            if chosen:
                self._dirty.add(chosen[0])
                return Dispatch(tuple(chosen), "best effort: its TPOT is below every server's idle step")
        if late:
            # An idle server slows no one down: a late request must not wait for a fit
            # the latency model may never predict (e.g. its TPOT below the idle step).
            idle = idle_server((bid for i in order for bid in bins.bins[i]), snapshot.loads)
            if idle is not None:
                self._dirty.add(idle)
                return Dispatch((idle,), "late, best effort on an idle server")
            return Defer("late: waiting for a server it does not slow down")
        return Defer("no feasible server", retry_at=self._late_at(request, snapshot, bins, order))

    def _scan_moving(self, need: Need, bins: _Bins, order: list[int], snap: Snapshot) -> list[str]:
        """:meth:`_scan` with dynamic bins (:mod:`slorouter.policy.rebalance`): own bin,
        else a server lent by a tighter bin with room, else overflow, else a server
        borrowed from a looser bin."""
        mv = self.moves
        assert mv is not None
        if need.late:
            return self._scan(need, bins, order, snap)
        own = bool(order) and bins.taus[order[0]] == need.tightness
        chosen = self._scan(need, bins, order[:1], snap) if own else []
        if chosen:
            return chosen
        receive = mv.may_receive(need.tightness, snap.now)
        bid = mv.lend(need, bins, snap, self.fp, bins.tiers_of) if receive else None
        if bid is not None:
            mv.move(bid, need.tightness, snap.backends, snap.now)
            self._get_bins(snap)  # rebuilt with the server in its new bin
            return [bid]
        chosen = self._scan(need, bins, order[1:] if own else order, snap)
        if chosen:
            return chosen
        bid = mv.borrow(need, bins, self._index, snap, self.fp, bins.tiers_of) if receive else None
        if bid is None:
            return []
        mv.move(bid, need.tightness, snap.backends, snap.now)
        self._get_bins(snap)
        return [bid]

    def _late_at(self, req: RequestInfo, snap: Snapshot, bins: _Bins, order: list[int]) -> float | None:
        """When the request's SLO stops being attainable even on an idle server."""
        return late_at(req, snap, bins.bins[order[-1]][0])

    def _is_late(self, req: RequestInfo, snap: Snapshot, bins: _Bins, order: list[int], now: float) -> bool:
        at = self._late_at(req, snap, bins, order)
        return at is not None and now > at


def tier_tightness_of_need(need: Need) -> float:
    return need.tightness


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
    placement, fp = read_params(p, ctx)
    overflow = p.boolean("overflow", True)
    fallbacks = p.integer("fallbacks", 2, lo=0)
    overflow_headroom = p.number("overflow_headroom", 0.85, lo=0.1, hi=1.0)
    relax = p.number("relax", 1.15, lo=1.0, hi=2.0)
    rebalance = RebalanceParams(
        enabled=p.boolean("rebalance", True), hold_s=p.number("rebalance_hold_s", 10.0, lo=0.0)
    )
    p.done()
    return PolyServe(placement, fp, overflow, fallbacks, overflow_headroom, relax, rebalance)
