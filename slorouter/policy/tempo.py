"""``tempo``: PolyServe's bins for latency work, just-enough capacity for the rest (Tempo).

Latency requests are placed exactly as ``polyserve`` places them (own bin first, lazy
upward overflow, rebalancing, the late and relaxed passes: this class *is* a
:class:`~slorouter.policy.polyserve.PolyServe`). Deadline, workflow and best-effort
requests are placed by the rules below (docs/policies.md, "tempo").

**Just-enough deadline work.** A ``deadline`` or ``workflow`` request is due at
``RequestInfo.due_at`` (a workflow call: its stage budget,
:mod:`slorouter.models.workflows`). Servers are scanned **loosest bin first** (best
effort, deadline bins from the longest deadline, then latency bins from the loosest
TPOT); the first bin with a server that meets the deadline *with a margin* wins:

    first token (wait behind its prefill backlog + its own prefill)
        + bound × step (the server's step with the request placed)  ≤  (1 − margin) · (due − now)

(``deadline_margin``, default 0.15). Within the bin, ``deadline_placement: match``
(default) takes the server whose ceiling — its deadline residents' smallest cap (below),
its host TPOT, both clipped at the step of a full server — is nearest (log ratio, 10 %
steps) to the request's own cap, the most loaded among equals: tight work joins tight
servers and loose work loose ones, so one tight resident does not hold a server full of
loose work to its pace (measured: docs/policies.md §5b). ``pack`` takes the most loaded
such server — the least capacity that still does — and ``spread`` the least loaded. On a
server of a **latency bin** the request rides on the room its tighter residents leave: the
step there may grow up to the bin's TPOT, so the request must meet its deadline at that
pace (``bound × TPOT``), its placement must keep the host's TPOT with polyserve's overflow
headroom and reserve, and never while requests of the bin's own tiers wait in the router
queue (the room is theirs).

**Residents' deadlines.** A deadline request placed on a server tolerates a step up to
``cap = ((1 − margin)(due − now) − first) / bound`` (computed at placement); a later
placement on that server (deadline or best effort) must keep the predicted step within the
smallest cap of the server's deadline residents — so adding work never breaks a deadline
already promised. The caps are this policy's private state (``on_dispatch`` /
``on_finish``); with several router processes each knows its own residents only.

If no server meets the stage budget, the workflow's own deadline is tried (with the
margin, then without it); if none meets that, the request waits in the router queue
(``Defer`` with ``retry_at`` = when it cannot make it even on an idle server). A request
that can no longer meet its deadline at all is handled as ``polyserve`` handles late ones.

**Best effort takes only capacity no SLO request can use.** A best-effort request waits
while a deadline or workflow request waits in the router queue; it may use a latency
bin only while no latency tier that could be placed there waits, and only its spare room
(the step within ``c0 + best_effort_fill·(TPOT − c0)``, default 0.25, with the overflow
reserve); on the other servers only where the step stays within every deadline
resident's cap. Loosest bin first.

**Latency work on looser servers** (``latency_anywhere``, default false): a latency
request that polyserve's rules defer may go to a server of a looser bin whose step with it
placed keeps its TPOT (overflow headroom and reserve) and every deadline resident's cap —
servers already pacing latency residents first, the most loaded. On a looser bin every
placement keeps the residents' caps, so a deadline request there need not survive the host
TPOT (on a latency bin it must).

The router queue lets a workflow call wait until its workflow's deadline
(``workflow_wait: workflow``, default; ``call``: the tier's per-call limit, as polyserve).

Params: every ``polyserve`` param, plus ``deadline_margin`` (0..0.9, default 0.15),
``deadline_placement`` (match|pack|spread, default match), ``best_effort_fill`` (0..1,
default 0.25), ``queue_order`` (slack|gain), ``workflow_wait`` (workflow|call) and
``latency_anywhere`` (default false).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from slorouter.clock import Clock
from slorouter.policy.base import Params, PolicyContext
from slorouter.policy.bins import Bins, late_at
from slorouter.policy.feasibility import (
    INF,
    FeasibilityParams,
    Need,
    assess,
    first_token_time,
    read_params,
    tightest_tpot,
)
from slorouter.policy.polyserve import LATE_FILL, PolyServe
from slorouter.policy.rebalance import RebalanceParams
from slorouter.state.snapshot import Snapshot
from slorouter.values import Decision, Defer, Dispatch, Outcome, RequestInfo, SloClass

_MATCH = math.log(1.1)  # deadline_placement match: ceilings within 10 % match equally


class Tempo(PolyServe):
    kind = "tempo"
    queue_order = "slack"  # or "gain" (param queue_order; admission/gain.py, docs §5b)
    # a workflow call may wait in the router queue until its workflow's deadline, not only
    # its tier's per-call deadline (param workflow_wait; admission/overload.py, docs §5b)
    wait_to_workflow_deadline = True

    def __init__(
        self,
        placement: str = "spread",
        fp: FeasibilityParams | None = None,
        *,
        clock: Clock | None = None,
        deadline_margin: float = 0.15,
        deadline_placement: str = "match",
        best_effort_fill: float = 0.25,
        queue_order: str = "slack",
        workflow_wait: str = "workflow",
        latency_anywhere: bool = False,
        **polyserve: Any,
    ) -> None:
        super().__init__(placement, fp, **polyserve)
        self.queue_order = queue_order
        self.wait_to_workflow_deadline = workflow_wait == "workflow"
        self.latency_anywhere = latency_anywhere
        self.clock = clock
        self.margin = deadline_margin
        self.deadline_pack = deadline_placement == "pack"
        self.deadline_match = deadline_placement == "match"
        self.fp_be = replace(self.fp_overflow, late_fill=best_effort_fill, late_hold_s=INF)
        self._caps: dict[str, dict[int, float]] = {}  # backend -> rid -> tolerable step
        self._home: dict[int, str] = {}
        self._min: dict[str, float] = {}  # cached min of _caps[bid]
        self._pending: dict[int, tuple[str, float]] = {}  # rid -> (chosen backend, its cap)

    # -- private state: the deadline residents' caps ---------------------------------

    def min_cap(self, bid: str) -> float:
        """The largest step the deadline residents of ``bid`` (placed by this policy) tolerate."""
        m = self._min.get(bid)
        if m is None:
            caps = self._caps.get(bid)
            m = min(caps.values()) if caps else INF
            self._min[bid] = m
        return m

    def on_dispatch(self, request: RequestInfo, backend_id: str) -> None:
        super().on_dispatch(request, backend_id)
        got = self._pending.pop(request.rid, None)
        if got is None:
            if request.due_at is None or request.tier.slo.slo_class is SloClass.LATENCY:
                return
            # a failover (or a decision not made here): the cap without its first token
            now = self.clock.now() if self.clock is not None else request.arrival
            cap = (1.0 - self.margin) * (request.due_at - now) / max(1, request.output_bound)
        else:
            bid, cap = got
            if bid != backend_id:
                now = self.clock.now() if self.clock is not None else request.arrival
                cap = (1.0 - self.margin) * ((request.due_at or now) - now) / max(1, request.output_bound)
        self._forget(request.rid)
        self._caps.setdefault(backend_id, {})[request.rid] = cap
        self._home[request.rid] = backend_id
        m = self._min.get(backend_id)
        if m is not None and cap < m:
            self._min[backend_id] = cap

    def on_finish(self, outcome: Outcome) -> None:
        super().on_finish(outcome)
        self._pending.pop(outcome.rid, None)
        self._forget(outcome.rid)

    def _forget(self, rid: int) -> None:
        bid = self._home.pop(rid, None)
        if bid is None:
            return
        caps = self._caps[bid]
        cap = caps.pop(rid)
        if not caps:
            del self._caps[bid]
            self._min.pop(bid, None)
        elif cap <= self._min.get(bid, -INF):
            self._min.pop(bid, None)

    # -- decisions -------------------------------------------------------------------

    def _select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        cls = request.tier.slo.slo_class
        if cls is SloClass.LATENCY and self.latency_anywhere and snapshot.healthy:
            dec = super()._select(request, snapshot)
            if isinstance(dec, Defer):
                chosen = self._place_latency_looser(request, snapshot)
                if chosen:
                    return Dispatch(tuple(chosen), "on a looser server that keeps its TPOT")
            return dec
        if cls is SloClass.LATENCY or not snapshot.healthy:
            return super()._select(request, snapshot)
        bins = self._get_bins(snapshot)
        order = list(range(len(bins.taus) - 1, -1, -1))  # loosest first
        if not order:
            return super()._select(request, snapshot)
        if cls is SloClass.BEST_EFFORT:
            return self._best_effort(request, bins, order, snapshot)
        at = late_at(request, snapshot, bins.bins[order[-1]][0])
        if at is None or snapshot.now > at:
            return super()._select(request, snapshot)  # late (or no deadline): polyserve's rules
        due, wf_due = request.due_at, request.deadline_at
        assert due is not None
        tries = [(due, self.margin, "within its stage budget" if request.target_at else "just enough")]
        if wf_due is not None and wf_due > due:
            tries.append((wf_due, self.margin, "within its workflow's deadline"))
        tries.append((wf_due if wf_due is not None else due, 0.0, "no margin"))
        for d, margin, why in tries:
            chosen = self._place_deadline(request, d, margin, bins, order, snapshot)
            if chosen:
                return Dispatch(tuple(chosen), why)
        return Defer("no server meets its deadline", retry_at=at)

    def _place_deadline(
        self, req: RequestInfo, due: float, margin: float, bins: Bins, order: list[int], snap: Snapshot
    ) -> list[str]:
        now = snap.now
        budget = (1.0 - margin) * (due - now)
        if budget <= 0:
            return []
        need = Need(req, now, False, self.fp.kv_estimate)
        need.deadline_left = budget
        loads, lat, queued = snap.loads, snap.latency, snap.queued
        for i in order:
            tau_bin = bins.taus[i]
            paced = tau_bin.paced
            if paced and queued and any(queued.get(t, 0) > 0 for t in bins.tiers_of.get(tau_bin, ())):
                continue  # the bin's own tiers are waiting for it
            fp = self.fp_overflow if paced else self.fp
            found: list[tuple[float, float, str]] = []
            for bid in bins.bins[i]:
                load = loads[bid]
                lin, lim = lat.linear(bid), lat.limits(bid)
                tau = tau_bin.tpot if paced else tightest_tpot(load, bins.tpot_by_tier)
                s = assess(need, load, lin, lim, tau, fp)
                if s < 0 or s > self.min_cap(bid):
                    continue
                first = first_token_time(need.p, load, lin, lim)
                cap = (budget - first) / need.b
                if paced and cap < fp.headroom * tau:
                    # the host's pace may rise to its TPOT (placements there by polyserve's
                    # rules do not see the caps): the deadline must survive it; elsewhere
                    # every placement keeps the step within the residents' caps
                    continue
                if self.deadline_match:
                    # the server's ceiling (its residents' smallest cap, its host TPOT) next
                    # to this request's own: tight work joins tight servers, loose work loose
                    # ones, so one tight resident does not hold a server of loose work to
                    # its pace; both clipped at the step of a full server (no pace above
                    # it is ever reached). Most loaded within 10 % of the best match.
                    full = lin.at(lim.max_num_seqs, lim.kv_capacity_tokens)
                    ceil = min(self.min_cap(bid), tau, full)
                    found.append((round(abs(math.log(ceil / min(cap, full))) / _MATCH), -s, bid))
                    continue
                found.append((-s if self.deadline_pack else s, 0.0, bid))
            if found:
                found.sort()
                ranked = [b for _, _, b in found[: 1 + self.fallbacks]]
                self._pending[req.rid] = (ranked[0], self._cap_on(req, ranked[0], budget, snap))
                return ranked
        return []

    def _place_latency_looser(self, req: RequestInfo, snap: Snapshot) -> list[str]:
        """A latency request its own and tighter bins cannot take, on a server of a looser
        bin whose step with it placed stays within its TPOT (the overflow headroom and
        reserve) and every deadline resident's cap: the engine's step depends on the batch,
        not on the bin, so a looser server running below the request's TPOT keeps it."""
        bins = self._get_bins(snap)
        own = req.tier.slo.tightness
        need = Need(req, snap.now, False, self.fp.kv_estimate)
        loads, lat = snap.loads, snap.latency
        found: list[tuple[float, float, str]] = []
        for i, tau_bin in enumerate(bins.taus):
            if tau_bin <= own:
                continue
            for bid in bins.bins[i]:
                load = loads[bid]
                tau = tightest_tpot(load, bins.tpot_by_tier)
                s = assess(need, load, lat.linear(bid), lat.limits(bid), tau, self.fp_overflow)
                if s < 0 or s > self.min_cap(bid):
                    continue
                # servers already pacing latency residents first (no deadline request loses
                # room it could have used: its placement checks the host's TPOT), most loaded
                found.append((0.0 if tau < INF else 1.0, -s / need.tpot, bid))
        found.sort()
        return [b for _, _, b in found[: 1 + self.fallbacks]]

    @staticmethod
    def _cap_on(req: RequestInfo, bid: str, budget: float, snap: Snapshot) -> float:
        lat = snap.latency
        first = first_token_time(req.prompt_tokens, snap.loads[bid], lat.linear(bid), lat.limits(bid))
        return (budget - first) / max(1, req.output_bound)

    def _best_effort(self, req: RequestInfo, bins: Bins, order: list[int], snap: Snapshot) -> Decision:
        queued = snap.queued
        tiers = snap.backends.tier_by_name
        waiting = [tiers[t] for t, n in queued.items() if n > 0 and t in tiers]
        if any(t.slo.slo_class in (SloClass.DEADLINE, SloClass.WORKFLOW) for t in waiting):
            return Defer("best effort: requests with a deadline are waiting")
        tight_waiting = [t.slo.tightness for t in waiting if t.slo.slo_class is SloClass.LATENCY]
        need = Need(req, snap.now, True, self.fp.kv_estimate)
        loads, lat = snap.loads, snap.latency
        for i in order:
            tau_bin = bins.taus[i]
            paced = tau_bin.paced
            if paced and any(w >= tau_bin for w in tight_waiting):
                continue  # a waiting latency tier could be placed here
            found: list[tuple[float, str]] = []
            for bid in bins.bins[i]:
                load = loads[bid]
                lin, lim = lat.linear(bid), lat.limits(bid)
                tau = tau_bin.tpot if paced else tightest_tpot(load, bins.tpot_by_tier)
                s = assess(need, load, lin, lim, tau, self.fp_be)
                if s < 0 or s > self.min_cap(bid):
                    continue
                util = (load.running + 1) / lim.max_num_seqs if tau == INF else s / tau
                found.append((-util if self.pack else util, bid))
            if found:
                found.sort()
                return Dispatch(tuple(b for _, b in found[: 1 + self.fallbacks]), "best effort, spare room")
        return Defer("best effort: no spare room")


def make_tempo(params: Mapping[str, Any], ctx: PolicyContext) -> Tempo:
    p = Params(params)
    placement, fp = read_params(p, ctx, late_fill=LATE_FILL)
    kw: dict[str, Any] = {
        "overflow": p.boolean("overflow", True),
        "fallbacks": p.integer("fallbacks", 2, lo=0),
        "overflow_headroom": p.number("overflow_headroom", 0.95, lo=0.1, hi=1.0),
        "relax": p.number("relax", 1.15, lo=1.0, hi=2.0),
        "overflow_reserve": p.integer("overflow_reserve", 1, lo=0),
        "rebalance": RebalanceParams(
            enabled=p.boolean("rebalance", True),
            hold_s=p.number("rebalance_hold_s", 10.0, lo=0.0),
            receive_s=p.number("rebalance_receive_s", 2.0, lo=0.0),
        ),
    }
    margin = p.number("deadline_margin", 0.15, lo=0.0, hi=0.9)
    dplace = p.choice("deadline_placement", "match", ("match", "pack", "spread"))
    fill = p.number("best_effort_fill", 0.25, lo=0.0, hi=1.0)
    order = p.choice("queue_order", "slack", ("slack", "gain"))
    wf_wait = p.choice("workflow_wait", "workflow", ("workflow", "call"))
    anywhere = p.boolean("latency_anywhere", False)
    p.done()
    return Tempo(
        placement,
        fp,
        clock=ctx.clock,
        deadline_margin=margin,
        deadline_placement=dplace,
        best_effort_fill=fill,
        queue_order=order,
        workflow_wait=wf_wait,
        latency_anywhere=anywhere,
        **kw,
    )
