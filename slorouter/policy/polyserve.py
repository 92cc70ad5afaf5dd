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
  No overflow into a bin while requests of its own tiers wait in the queue: the room
  is theirs (without this, on two real vLLM servers, a tight request deferred for its
  TTFT waited ~6 s while loose overflow refilled its server at every completion).
* **Lent room** (``placement: spread``, ``lend_room``): a latency request whose own bin
  has a feasible server still goes to a tighter bin's server where its predicted step is
  lower, if that server keeps its own tier's TPOT (× ``overflow_headroom``) with room for
  the occupancy its tier's arrivals have met (``lend_quantile``) and the bin was not
  short of room for its tier within the lent request's life
  (:mod:`slorouter.policy.lending`): on a fleet nobody scales, idle room is paid for anyway,
  and closed-loop clients send more when answered faster.
* **Nothing feasible** → for a request with an SLO, the same scan with every threshold ×
  ``relax`` (the predictions are a conservative quantile; a nearly-feasible server now
  beats a feasible one too late); if its TPOT is below every candidate's predicted step
  *alone*, waiting cannot help: best effort at once; else :class:`Defer`, with
  ``retry_at`` = the moment its TTFT can no longer be met even on an idle server. After
  that the request is *late*: ``Reject(429, Retry-After)`` (``when_late: reject``, the
  default) or best effort on **spare room** only — its pace meets everyone's TPOT and the
  server stays within ``late_fill`` of its step range (``c0 + late_fill·(τ − c0)``), or
  any idle server: a request that has already missed must not take the room an on-time
  one needs (docs/policies.md §5 has the measurements behind each rule).

Params (docs/policies.md §1 and §5 say what each does and why its default):
``placement`` (auto), ``kv_estimate`` (peak), ``headroom`` (1.0), ``interference_checks``
(4), ``catchup_tokens`` (64), ``late_fill`` (0.25), ``late_hold_s`` (none), ``overflow``
(true), ``overflow_headroom`` (0.95), ``overflow_reserve`` (1), ``relax`` (1.15),
``fallbacks`` (2), ``rebalance`` (true), ``rebalance_hold_s`` (10), ``rebalance_receive_s`` (2),
``lend_room`` (true with spread placement; not with pack), ``lend_quantile`` (0.99).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from slorouter.models.base import LatencyView
from slorouter.models.static import LinearStep
from slorouter.policy.base import BasePolicy, Params, PolicyContext
from slorouter.policy.binindex import TOP, BinIndex
from slorouter.policy.bins import Bins, late_at, tier_tightness, waiting
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
from slorouter.policy.lending import LendParams, Occupancy, lender
from slorouter.policy.rebalance import BinMoves, RebalanceParams
from slorouter.state.load import BackendLoad
from slorouter.state.snapshot import Snapshot
from slorouter.values import (
    Decision,
    Defer,
    Dispatch,
    Reject,
    RequestInfo,
    Scope,
    SloClass,
    Tightness,
)

_INDEX_MIN: Final = 16  # bins larger than this are indexed (see slorouter.policy.binindex)
_EPS: Final = 1e-9  # relative margin on the index's bounds (float rounding)
LATE_FILL: Final = 0.25  # a late request fills at most this share of a server's step range


class _Stale(Exception):
    """An examined server's coefficients changed without the change feed saying so."""


class PolyServe(BasePolicy):
    kind = "polyserve"

    def __init__(
        self,
        placement: str = "spread",
        fp: FeasibilityParams | None = None,
        overflow: bool = True,
        fallbacks: int = 2,
        overflow_headroom: float = 0.95,
        relax: float = 1.15,
        rebalance: RebalanceParams | None = None,
        overflow_reserve: int = 1,
        *,
        index_min: float = _INDEX_MIN,
        lend: LendParams | None = None,
    ) -> None:
        self.pack = placement == "pack"
        self.fp = fp or FeasibilityParams()
        self.fp_overflow = replace(
            self.fp, headroom=self.fp.headroom * overflow_headroom, reserve=overflow_reserve
        )
        self._relaxed = {id(f): replace(f, headroom=f.headroom * relax) for f in (self.fp, self.fp_overflow)}
        self.relax = relax
        self.overflow = overflow
        self.fallbacks = fallbacks
        # the ranked list depends on the top `_top` feasible servers of a bin only
        self._top = max(1 + fallbacks, self.fp.interference_checks)
        self._index_min = index_min  # bins with more servers are indexed (inf: never)
        self._bins: Bins | None = None
        self._bins_key: tuple[tuple[int, int, int], int] = ((0, 0, 0), 0)
        rb = rebalance or RebalanceParams()
        self.moves: BinMoves | None = BinMoves(rb) if rb.enabled else None
        self._index: list[BinIndex | None] = []
        self._where: dict[str, BinIndex] = {}
        self._changed: set[str] | None = None  # the tracker's change feed (Tracker.watch)
        self._feed_of: object = None  # whose feed it is (the tracker's loads mapping)
        self._sentinel: tuple[str, LinearStep] | None = None
        self._order_cache: dict[Tightness, list[int]] = {}
        self._scope_cache: dict[tuple[int, Tightness], Scope] = {}
        lp = lend or LendParams()
        # lending a tighter bin's spare room (slorouter.policy.lending): spread only
        self.occupancy: Occupancy | None = Occupancy(lp.quantile) if lp.enabled and not self.pack else None
        self.fp_lend = replace(self.fp_overflow, reserve=0)
        self._bin_of: dict[str, int] = {}

    # -- private state ---------------------------------------------------------------

    def _get_bins(self, snap: Snapshot) -> Bins:
        mv = self.moves
        key = (snap.fleet, mv.moves if mv else 0)  # generation numbers, never reused
        if self._bins is None or key != self._bins_key:
            self._bins = Bins(snap.backends, snap.healthy, mv.override(snap.backends) if mv else None)
            self._bins_key = key
            self._order_cache = {}
            self._scope_cache = {}
            self._bin_of = {b: i for i, ids in enumerate(self._bins.bins) for b in ids}
            self._build_index(snap)
        elif self._sentinel is not None:
            self._refresh(snap)
        return self._bins

    def _build_index(self, snap: Snapshot) -> None:
        bins = self._bins
        assert bins is not None
        self._index = []
        self._where = {}
        self._sentinel = None
        if snap.watch is not None and snap.loads is not self._feed_of:
            self._changed = snap.watch(self)
            self._feed_of = snap.loads
        if self._changed is None or snap.watch is None or self.fp.kv_estimate != "peak":
            return  # keys could not be kept exact: every decision scans its bins
        for i, ids in enumerate(bins.bins):
            if bins.taus[i].paced and len(ids) > self._index_min:
                ix = BinIndex(self.fp.catchup_tokens)
                ix.build(ids, snap.loads, snap.latency)
                self._index.append(ix)
                self._where.update((b, ix) for b in ids)
                if self._sentinel is None:
                    self._sentinel = (ids[0], ix.lins[ids[0]])
            else:
                self._index.append(None)
        self._changed.clear()

    def _refresh(self, snap: Snapshot) -> None:
        """Re-key the servers whose load changed; re-key all when the latency model's
        coefficients changed for every server at once (e.g. a new prefill ratio)."""
        loads, lat, where = snap.loads, snap.latency, self._where
        ch = self._changed
        if ch:
            for bid in ch:
                ix = where.get(bid)
                if ix is not None:
                    ix.refresh(bid, loads[bid], lat.linear(bid))
            ch.clear()
        s = self._sentinel
        if s is not None and (lin := lat.linear(s[0])) is not s[1] and lin != s[1]:
            self._build_index(snap)

    def _candidate_bins(self, req: RequestInfo, bins: Bins) -> list[int]:
        own = tier_tightness(req.tier)
        got = self._order_cache.get(own)
        if got is not None:
            return got
        allowed = [i for i, t in enumerate(bins.taus) if t <= own]
        allowed.reverse()  # loosest allowed first: own bin, then tighter ones
        if not self.overflow:
            allowed = allowed[:1] if allowed and bins.taus[allowed[0]] == own else []
        self._order_cache[own] = allowed
        return allowed

    def _scan(
        self, need: Need, bins: Bins, order: list[int], snap: Snapshot, relax: bool = False
    ) -> list[str]:
        loads = snap.loads
        lat = snap.latency
        own = need.tightness
        index = self._index
        queued = snap.queued
        for i in order:
            if bins.taus[i] < own and queued and waiting(queued, bins.tiers_of.get(bins.taus[i], ())):
                continue  # the bin's own tiers are waiting for it: no overflow into it
            fp = self.fp if bins.taus[i] >= own else self.fp_overflow
            if relax:
                fp = self._relaxed[id(fp)]
            tau_bin = bins.taus[i]
            host = tau_bin.tpot
            ix = index[i] if i < len(index) else None
            if ix is None:
                found = self._scan_all(bins.bins[i], need, host, bins, fp, loads, lat)
            else:
                found = self._scan_index(ix, need, host, fp, loads, lat)
            if found:
                found.sort()
                ranked = [b for _, b in found]
                if fp.interference_checks and len(ranked) > 1:
                    ranked = prefer_fitting(ranked, need, loads, lat, snap.now, fp.interference_checks)
                return ranked[: 1 + self.fallbacks]
        return []

    def _scan_all(
        self,
        ids: tuple[str, ...],
        need: Need,
        host: float,
        bins: Bins,
        fp: FeasibilityParams,
        loads: Mapping[str, BackendLoad],
        lat: LatencyView,
    ) -> list[tuple[float, str]]:
        """Every feasible server of a bin with its rank key (the reference scan)."""
        found: list[tuple[float, str]] = []
        for bid in ids:
            load = loads[bid]
            lim = lat.limits(bid)
            tau = host
            if load.tier_counts and host == INF:
                tau = tightest_tpot(load, bins.tpot_by_tier)
            s = assess(need, load, lat.linear(bid), lim, tau, fp)
            if s < 0:
                continue
            if tau == INF and host == INF:
                # best-effort bin: no TPOT to fill, rank by batch
                util = (load.running + 1) / lim.max_num_seqs
            else:
                util = s / (tau if tau < need.tpot else need.tpot)
            found.append((-util if self.pack else util, bid))
        return found

    def _scan_index(
        self,
        ix: BinIndex,
        need: Need,
        host: float,
        fp: FeasibilityParams,
        loads: Mapping[str, BackendLoad],
        lat: LatencyView,
    ) -> list[tuple[float, str]]:
        """The top ``_top`` entries of :meth:`_scan_all` for an indexed bin (a tight
        bin: a finite ``host`` TPOT), from the few servers around the screen (see binindex)."""
        t = host if host < need.tpot else need.tpot
        lo_add, hi_add = ix.adds(need.p, need.b)
        limit = fp.headroom * t - lo_add
        if fp.reserve:
            limit -= fp.reserve * ix.seq_add_lo(need.p + need.b)
        limit += abs(limit) * _EPS
        o = ix.order
        end = bisect.bisect_right(o, (limit, TOP))
        top, pack, lins = self._top, self.pack, ix.lins
        found: list[tuple[float, str]] = []
        worst = INF  # rank key of the top-th best found so far
        for j in range(end - 1, -1, -1) if pack else range(end):
            key, bid = o[j]
            if worst < INF:
                # the best rank key a server with this key (or any after it) could have
                best = -(key + hi_add) * (1.0 + _EPS) / t if pack else (key + lo_add) * (1.0 - _EPS) / t
                if best > worst:
                    break
            lin = lat.linear(bid)
            if lin is not lins[bid] and lin != lins[bid]:
                raise _Stale(bid)
            s = assess(need, loads[bid], lin, lat.limits(bid), host, fp)
            if s < 0:
                continue
            util = s / t
            found.append((-util if pack else util, bid))
            if len(found) >= top:
                found.sort()
                del found[top:]
                worst = found[-1][0]
        return found

    def scope(self, request: RequestInfo, snapshot: Snapshot) -> Scope:
        """A request's home is its tier's bin; it may reach that bin and the tighter
        ones (upward overflow; its own bin only with ``overflow: false``). Bins of
        different pools of eligible servers are different homes."""
        pool = snapshot.fleet[2]
        own = tier_tightness(request.tier)
        if not snapshot.healthy:
            return Scope((pool, own), ((pool, own),), 0)
        bins = self._get_bins(snapshot)
        got = self._scope_cache.get((pool, own))
        if got is None:
            order = self._candidate_bins(request, bins)
            reach = tuple((pool, bins.taus[i]) for i in order)
            if not reach or reach[0][1] != own:
                reach = ((pool, own), *reach)  # no server in its own bin now: still its home
            got = Scope((pool, own), reach, sum(len(bins.bins[i]) for i in order))
            self._scope_cache[(pool, own)] = got
        return got

    def shared_state(self) -> Any:
        """The bin moves, for the other router processes (leaderless: newest wins)."""
        return self.moves.export() if self.moves is not None else None

    def adopt_shared(self, states: list[Any]) -> None:
        if self.moves is not None:
            self.moves.adopt(m for st in states if isinstance(st, list) for m in st)

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        try:
            return self._select(request, snapshot)
        except _Stale:
            self._bins = None  # a coefficient changed unannounced: re-key everything
            return self._select(request, snapshot)

    def _select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        if not snapshot.healthy:
            return self.no_backend(snapshot)
        bins = self._get_bins(snapshot)
        order = self._candidate_bins(request, bins)
        if not order:
            return Reject(503, f"no healthy backend serves tier {request.tier.name!r} or a tighter one")
        now = snapshot.now
        at = self._late_at(request, snapshot, bins, order)
        late = at is not None and now > at
        need = Need(request, now, late, self.fp.kv_estimate)
        if late and request.tier.rejects_late and at is not None and at >= request.arrival:
            # late by waiting (late on arrival — its TTFT too short for its prompt even on an
            # idle server — is served best effort: retrying would not help)
            # the admission core answers it 429 with the predicted drain time as Retry-After
            return Reject(429, "the TTFT deadline can no longer be met")
        chosen = self._place(need, bins, order, snapshot)
        if chosen:
            why = "late, best effort" if late else "feasible"
            return self._dispatch(request, chosen, why, snapshot, bins)
        if not late and self.relax > 1.0 and request.tier.slo.slo_class is not SloClass.BEST_EFFORT:
            chosen = self._scan(need, bins, order, snapshot, relax=True)
            if chosen:
                return self._dispatch(request, chosen, "relaxed", snapshot, bins)
        if not late and hopeless(
            request, (b for i in order for b in bins.bins[i]), snapshot.latency, self.fp, self.relax
        ):
            # no server meets its TPOT even alone: waiting for capacity cannot help
            late = True
            need = Need(request, now, True, self.fp.kv_estimate, hopeless=True)
            chosen = self._scan(need, bins, order, snapshot)
            if chosen:
                return self._dispatch(
                    request, chosen, "best effort: its TPOT is below every server's idle step", snapshot, bins
                )
        if late:
            # An idle server slows no one down: a late request must not wait for a fit
            # the latency model may never predict (e.g. its TPOT below the idle step).
            idle = idle_server((bid for i in order for bid in bins.bins[i]), snapshot.loads)
            if idle is not None:
                return self._dispatch(request, [idle], "late, best effort on an idle server", snapshot, bins)
            return Defer("late: waiting for a server it does not slow down")
        return Defer("no feasible server", retry_at=self._late_at(request, snapshot, bins, order))

    def _dispatch(
        self, req: RequestInfo, chosen: list[str], why: str, snap: Snapshot, bins: Bins
    ) -> Dispatch:
        """The decision; with lending on, the occupancy the request meets is recorded when
        it goes to a server of its own bin (:mod:`slorouter.policy.lending`)."""
        occ = self.occupancy
        if occ is not None:
            bins = self._bins or bins  # a move while placing rebuilt the bins (and _bin_of)
            i = self._bin_of.get(chosen[0])
            tau = req.tier.slo.tightness
            if i is not None and bins.taus[i] == tau:
                load = snap.loads[chosen[0]]
                held = 1 + sum(load.tier_counts.get(t, 0) for t in bins.tiers_of.get(tau, ()))
                occ.observe(tau, held, req.prompt_tokens + max(1, req.output_bound), snap.now)
        return Dispatch(tuple(chosen), why)

    def _place(self, need: Need, bins: Bins, order: list[int], snap: Snapshot) -> list[str]:
        """Own bin (with room lent by a tighter bin if that is faster, spread only), else
        with dynamic bins a server lent whole by a tighter bin with room, else overflow,
        else a server borrowed from a looser bin (:mod:`slorouter.policy.rebalance`)."""
        if need.late:
            return self._scan(need, bins, order, snap)
        own = bool(order) and bins.taus[order[0]] == need.tightness
        occ = self.occupancy
        if own:
            chosen = self._scan(need, bins, order[:1], snap)
            if chosen:
                if occ is not None and len(order) > 1 and need.tightness.paced:
                    return self._lend_room(need, bins, order[1:], snap, chosen)
                return chosen
        if occ is not None:
            occ.short(need.tightness, snap.now)  # its own bin had no room for it
        rest = order[1:] if own else order
        mv = self.moves
        if mv is None:
            return self._scan(need, bins, rest, snap)
        receive = mv.may_receive(need.tightness, snap.now)
        bid = mv.lend(need, bins, snap, self.fp, bins.tiers_of) if receive else None
        if bid is not None:
            mv.move(bid, need.tightness, snap.backends, snap.now)
            self._get_bins(snap)  # rebuilt with the server in its new bin
            return [bid]
        chosen = self._scan(need, bins, rest, snap)
        if chosen:
            return chosen
        bid = mv.borrow(need, bins, snap, self.fp, bins.tiers_of) if receive else None
        if bid is None:
            return []
        mv.move(bid, need.tightness, snap.backends, snap.now)
        self._get_bins(snap)
        return [bid]

    def _lend_room(
        self, need: Need, bins: Bins, tighter: list[int], snap: Snapshot, chosen: list[str]
    ) -> list[str]:
        """``chosen`` (the request's own bin, ranked), or first the server of a tighter bin
        that lends it room and where its predicted step is lower than on ``chosen[0]``
        (:mod:`slorouter.policy.lending`). Examines every server of an unindexed bin and
        the ``_top`` least loaded of an indexed one."""
        occ = self.occupancy
        assert occ is not None
        loads, lat = snap.loads, snap.latency
        first = chosen[0]
        host = bins.taus[self._bin_of[first]].tpot
        best_s = assess(need, loads[first], lat.linear(first), lat.limits(first), host, self.fp)
        if best_s < 0:  # chosen by a rule beside the step (interference): keep it
            return chosen
        queued = snap.queued
        groups = []
        for i in tighter:
            tiers = bins.tiers_of.get(bins.taus[i], ())
            if queued and waiting(queued, tiers):
                continue  # the bin's own tiers are waiting for its room
            ix = self._index[i] if i < len(self._index) else None
            ids: Sequence[str] = bins.bins[i] if ix is None else [b for _, b in ix.order[: self._top]]
            groups.append((bins.taus[i], ids, tiers))
        floor = self.fp_overflow.reserve
        borrowing = self.moves is not None  # a tighter bin's shortage may take a looser server
        best = lender(need, occ, groups, snap, bins.tpot_by_tier, self.fp_lend, floor, best_s, borrowing)
        if best is None:
            return chosen
        return [best, *chosen][: 1 + self.fallbacks]

    def _late_at(self, req: RequestInfo, snap: Snapshot, bins: Bins, order: list[int]) -> float | None:
        """When the request's SLO stops being attainable even on an idle server."""
        return late_at(req, snap, bins.bins[order[-1]][0])


def make_polyserve(params: Mapping[str, Any], ctx: PolicyContext) -> PolyServe:
    p = Params(params)
    placement, fp = read_params(p, ctx, late_fill=LATE_FILL)
    lend_room = p.boolean("lend_room", placement == "spread")
    if lend_room and placement != "spread":
        p.errors.append(("lend_room", "needs placement: spread (a packed fleet gives idle servers back)"))
    lend = LendParams(enabled=lend_room, quantile=p.number("lend_quantile", 0.99, lo=0.5, hi=0.9999))
    overflow = p.boolean("overflow", True)
    fallbacks = p.integer("fallbacks", 2, lo=0)
    overflow_headroom = p.number("overflow_headroom", 0.95, lo=0.1, hi=1.0)
    relax = p.number("relax", 1.15, lo=1.0, hi=2.0)
    overflow_reserve = p.integer("overflow_reserve", 1, lo=0)
    rebalance = RebalanceParams(
        enabled=p.boolean("rebalance", True),
        hold_s=p.number("rebalance_hold_s", 10.0, lo=0.0),
        receive_s=p.number("rebalance_receive_s", 2.0, lo=0.0),
    )
    p.done()
    return PolyServe(
        placement, fp, overflow, fallbacks, overflow_headroom, relax, rebalance, overflow_reserve, lend=lend
    )
