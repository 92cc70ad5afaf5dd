"""Feasibility of placing one request on one server, from the latency model.

Shared by the SLO-aware policies (``polyserve``, ``slo-pack``). A server is *feasible*
for a request when, with the request added (all at the model's conservative quantile,
with the backend's :meth:`~slorouter.models.base.LatencyView.linear` coefficients):

1. **room**: ``running + 1 ≤ max_num_seqs`` and the future-peak KV
   ``peak_kv + prompt + bound ≤ kv_capacity`` (no preemption);
2. **TPOT**: the pace (step time including the typical prefill interference, see
   :mod:`slorouter.models.latency`) at ``batch + 1`` and the estimated KV — ``peak``
   (default: every resident grown to its predicted length, plus this request at its
   peak) or ``current`` (the KV held now plus this request's prompt and half its
   bound), plus the **prefill backlog** (prompts not yet started, this one included)
   spread over ``catchup_tokens`` (64) steps — ``c_prefill · backlog / catchup_tokens``: a
   burst of long prompts stalls every resident, and per-token deadlines forgive a stall
   only as far as later steps catch up — is at most ``headroom × τ_host``, where
   ``τ_host`` is the tightest TPOT on the server (its bin's TPOT, its residents', this
   request's) — with several router processes, after the requests the others may place
   there before this one's next update (``BackendLoad.ahead``, the herding guard of
   :mod:`slorouter.state.sync`; only in this check, not in the rank); for a request
   already **late** (its TTFT can no longer be met: served best effort) the limit is
   ``c0 + late_fill · (headroom × τ − c0)`` — a late request takes only spare room
   (``late_fill`` 1 = no difference; polyserve uses 0.25); with ``reserve`` ``r``
   (polyserve's overflow: 1), the server must still meet this limit — and have the seats
   and KV — with ``r`` more sequences of this request's size, so overflow never takes the
   last place a request of the host's own tier would need;
3. **TTFT** (unless the request is already late): time left until the TTFT deadline ≥
   the current step + the prefill backlog ahead of it and its own prompt, chunked by the
   engine's ``max_batched_tokens`` (``chunks · step(batch) + c_prefill · tokens``), plus
   what the server's observed first tokens take beyond that at its load
   (``EngineLimits.ttft_extra``, learned by the latency model); and
   first token + one step ≤ TTFT + the request's TPOT;
4. **deadline** (deadline/workflow classes): first token + ``bound`` steps ≤ time left.

:func:`assess` returns the predicted step time (the server's *load* after placement,
used to rank: most loaded = largest ``step / τ_host``) or ``-1.0`` when infeasible.

**Chunked-prefill interference** (a preference, not a hard check): the request's prompt
(behind the prompts already waiting) rides along in the next steps and delays every
decoding resident by about ``c_prefill · (backlog + prompt)`` in total (a 14k-token
prompt: 7 full-budget steps). It *fits* on a server when that delay is at most the
smallest slack among the residents
(:meth:`~slorouter.state.load.BackendLoad.min_slack`: time until a resident's next
per-token deadline, extrapolated from its last observed token at the server's current
pace, over the load's summary of its newest residents). :func:`prefer_fitting` moves the
first fitting candidate (in rank order) to the front; when none of the checked
candidates fits, the one whose residents have the most slack.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from slorouter.models.base import LatencyView
from slorouter.models.static import EngineLimits, LinearStep, first_token_base
from slorouter.policy.base import Params, PolicyContext
from slorouter.state.load import BackendLoad
from slorouter.values import RequestInfo

INF = math.inf


@dataclass(frozen=True, slots=True)
class FeasibilityParams:
    kv_estimate: str = "peak"  # peak | current
    headroom: float = 1.0  # usable fraction of the host's TPOT
    interference_checks: int = 4  # candidates examined for prefill interference (0: off)
    catchup_tokens: float = 64.0  # steps over which a prefill backlog is amortized
    late_fill: float = 1.0  # share of a server's step range (c0 → TPOT) a late request may fill
    late_hold_s: float = math.inf  # ... for this long past its TTFT deadline; then like any other
    reserve: int = 0  # sequences of the request's size the server must still hold after it (overflow)


class Need:
    """Per-decision constants of one request."""

    __slots__ = ("b", "deadline_left", "late", "p", "tightness", "tpot", "ttft_left", "weight_kv")
    # ttft_left < 0 for a late latency request: -ttft_left is how long it has been late

    def __init__(
        self, req: RequestInfo, now: float, late: bool, kv_estimate: str = "peak", hopeless: bool = False
    ) -> None:
        slo = req.tier.slo
        self.p = req.prompt_tokens
        self.b = max(1, req.output_bound)
        # a request no server meets even alone (see ``hopeless``) is placed by the
        # residents' TPOT only; a merely late one still keeps its own pace where it goes
        self.tpot = slo.tpot_s if slo.tpot_s is not None and not hopeless else INF
        self.ttft_left = req.ttft_deadline - now
        dl = req.deadline_at
        if dl is None and slo.deadline_s is not None:
            dl = req.arrival + slo.deadline_s
        self.deadline_left = INF if dl is None else dl - now
        self.late = late
        self.tightness = req.tier.slo.tightness  # the request's own bin (see polyserve)
        # KV this request adds to the estimate used for the TPOT check
        self.weight_kv = self.p + self.b if kv_estimate == "peak" else self.p + self.b // 2


def assess(
    need: Need,
    load: BackendLoad,
    lin: LinearStep,
    lim: EngineLimits,
    tau_host: float,
    fp: FeasibilityParams,
) -> float:
    """Predicted step time with the request placed, or -1.0 when infeasible (see module)."""
    n = load.running + 1
    r = fp.reserve
    if n + r > lim.max_num_seqs:
        return -1.0
    peak = load.peak_kv + need.p + need.b
    if peak + r * (need.p + need.b) > lim.kv_capacity_tokens:
        return -1.0
    kv = peak if fp.kv_estimate == "peak" else load.kv_tokens + need.weight_kv
    step = lin.c0_s + lin.c_batch_s * n + lin.c_kv_s * kv
    step += lin.c_prefill_s * (load.prefill_tokens + need.p) / fp.catchup_tokens
    tau = tau_host if tau_host < need.tpot else need.tpot
    limit = fp.headroom * tau
    if need.late and fp.late_fill < 1.0 and limit < INF and -need.ttft_left < fp.late_hold_s:
        # a late request takes only spare room: what an on-time one would not need
        limit = lin.c0_s + fp.late_fill * (limit - lin.c0_s)
    check = step
    ahead = load.ahead
    if ahead[0]:  # other router processes may place here first (slorouter.state.sync)
        kv_ahead = ahead[2] if fp.kv_estimate == "peak" else ahead[1]
        check += (
            lin.c_batch_s * ahead[0] + lin.c_kv_s * kv_ahead + lin.c_prefill_s * ahead[1] / fp.catchup_tokens
        )
    if check + (r * (lin.c_batch_s + lin.c_kv_s * (need.p + need.b)) if r else 0.0) > limit:
        return -1.0
    if not need.late and (need.ttft_left < INF or need.deadline_left < INF):
        first = first_token_time(need.p, load, lin, lim)
        if first > need.ttft_left or first + step > need.ttft_left + need.tpot:
            return -1.0
        if need.deadline_left < INF and first + need.b * step > need.deadline_left:
            return -1.0
    return step


def first_token_time(p: int, load: BackendLoad, lin: LinearStep, lim: EngineLimits) -> float:
    """Predicted time from now to the first token of a ``p``-token prompt placed on a
    server with ``load`` (FCFS behind the prefill backlog, chunked by the step budget),
    plus what the server's observed TTFTs add at this load (``EngineLimits.ttft_extra``)."""
    n = load.running
    return first_token_base(p, n, load.kv_tokens, load.prefill_tokens, lin, lim) + lim.ttft_extra(n)


def prefer_fitting(
    ranked: list[str], need: Need, loads: Mapping[str, BackendLoad], lat: LatencyView, now: float, checks: int
) -> list[str]:
    """Reorder ``ranked`` so that the first server whose residents can absorb the
    request's prefill delay comes first (see module docs); at most ``checks`` servers
    are examined."""
    best_i, best_slack = 0, -INF
    for i, bid in enumerate(ranked[:checks]):
        load = loads[bid]
        if not load.running:
            best_i = i
            break
        lin = lat.linear(bid)
        delay = lin.c_prefill_s * (load.prefill_tokens + need.p)
        if delay <= lin.c0_s:  # smaller than one idle step: anyone absorbs it
            best_i = i
            break
        pace = lin.c0_s + lin.c_batch_s * load.running + lin.c_kv_s * load.kv_tokens
        sl = load.min_slack(now, pace, delay)
        if sl >= delay:
            best_i = i
            break
        if sl > best_slack:
            best_i, best_slack = i, sl
    if best_i:
        ranked = [ranked[best_i], *ranked[:best_i], *ranked[best_i + 1 :]]
    return ranked


def tightest_tpot(load: BackendLoad, tpot_by_tier: dict[str, float]) -> float:
    """Smallest TPOT among the server's residents (``inf`` if none has one)."""
    best = INF
    for tier, cnt in load.tier_counts.items():
        if cnt:
            t = tpot_by_tier.get(tier, INF)
            if t < best:
                best = t
    return best


def earliest_first_token(p: int, lin: LinearStep, lim: EngineLimits) -> float:
    """First-token time of a ``p``-token prompt on an idle server (the best case)."""
    chunks = lim.prefill_chunks(p)
    return chunks * (lin.c0_s + lin.c_batch_s) + lin.c_kv_s * p + lin.c_prefill_s * p + lim.ttft_extra(0)


def read_params(
    p: Params, ctx: PolicyContext, late_fill: float = 1.0, late_hold_s: float = math.inf
) -> tuple[str, FeasibilityParams]:
    """The params every feasibility-based policy shares: ``placement`` (pack|spread|auto;
    auto = pack when autoscaling gives emptied servers back, else spread) and the
    feasibility knobs."""
    placement = p.choice("placement", "auto", ("pack", "spread", "auto"))
    if placement == "auto":
        placement = "pack" if ctx.autoscaling else "spread"
    fp = FeasibilityParams(
        kv_estimate=p.choice("kv_estimate", "peak", ("peak", "current")),
        headroom=p.number("headroom", 1.0, lo=0.1, hi=2.0),
        interference_checks=p.integer("interference_checks", 4, lo=0),
        catchup_tokens=p.number("catchup_tokens", 64.0, lo=1.0),
        late_fill=p.number("late_fill", late_fill, lo=0.0, hi=1.0),
        late_hold_s=p.number("late_hold_s", late_hold_s, lo=0.0),
    )
    return placement, fp


def hopeless(
    req: RequestInfo, ids: Iterable[str], lat: LatencyView, fp: FeasibilityParams, relax: float
) -> bool:
    """Whether ``req``'s TPOT is below the predicted step of every one of ``ids`` even with
    the request alone on it (× ``relax``): waiting for capacity cannot make it feasible,
    so it should be served best effort now rather than held until its TTFT deadline.
    O(1) when a server can meet it (the scan stops at the first)."""
    tpot = req.tier.slo.tpot_s
    if tpot is None:
        return False
    limit = fp.headroom * relax * tpot
    kv = req.prompt_tokens + max(1, req.output_bound)
    for bid in ids:
        lin = lat.linear(bid)
        if (
            lin.c0_s
            + lin.c_batch_s
            + lin.c_kv_s * kv
            + lin.c_prefill_s * req.prompt_tokens / fp.catchup_tokens
            <= limit
        ):
            return False
    return True


def idle_server(ids: Iterable[str], loads: Mapping[str, BackendLoad]) -> str | None:
    """The first of ``ids`` with nothing resident: where a late request slows no one down,
    whatever the latency model predicts (so a late request is never stranded)."""
    for bid in ids:
        load = loads.get(bid)
        if load is not None and not load.running:
            return bid
    return None
