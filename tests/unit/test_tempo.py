"""Tempo at the router: workflow stage budgets (slorouter.models.workflows) and the
``tempo`` policy's just-enough deadline placement and best-effort guard, on hand-built
snapshots.

The fleet: ``step = 10 ms + 1 ms · batch`` (no KV or prefill cost), prefill of a 10-token
prompt ≈ one step; tiers ``lat`` (latency, TPOT 50 ms), ``dl`` (deadline 20 s), ``be``
(best effort). A deadline request with an output bound of 50 tokens meets a 20 s deadline
(margin 0.15: 17 s) at any step up to ~0.34 s.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace

import pytest

from slorouter.clock import ManualClock
from slorouter.models.static import EngineLimits, LinearStep, StaticLatency, StaticLengths
from slorouter.models.workflows import WorkflowBook
from slorouter.policy import registry
from slorouter.policy.base import ParamError, PolicyContext
from slorouter.policy.tempo import Tempo
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker
from slorouter.values import Defer, Dispatch, RequestInfo, Slo, SloClass, Status, Tier

STEP = LinearStep(c0_s=0.010, c_batch_s=1e-3, c_kv_s=0.0, c_prefill_s=0.0)
LIMITS = EngineLimits(max_num_seqs=512, kv_capacity_tokens=10_000_000, max_batched_tokens=4096)
LAT = Tier("lat", Slo(SloClass.LATENCY, 1.0, 0.050), rank=0)
DL = Tier("dl", Slo(SloClass.DEADLINE, deadline_s=20.0), rank=1)
WF = Tier("wf", Slo(SloClass.WORKFLOW, deadline_s=60.0), rank=2)
BE = Tier("be", Slo(SloClass.BEST_EFFORT), rank=3)
TIERS = (LAT, DL, WF, BE)


# -- stage budgets --------------------------------------------------------------------


def run_chain(book: WorkflowBook, wid: str, start: float, spans: list[float], d: float) -> list[float]:
    """Send a chain's calls one after the other (each lasting its span); the targets given."""
    t, targets = start, []
    for s in spans:
        targets.append(book.call(wid, "agent", t, d).target_at)
        t += s
        book.done(wid, t)
    return targets


def test_no_basis_gives_the_whole_budget_then_learned_shares_split_it() -> None:
    book = WorkflowBook(min_samples=4, idle_s=1.0)
    # unlearned: every call gets the workflow's deadline
    assert run_chain(book, "w0", 0.0, [2.0, 2.0, 2.0], 60.0) == [60.0, 60.0, 60.0]
    for k in range(1, 5):  # chains of 3 calls with spans 1 : 2 : 3
        run_chain(book, f"w{k}", 100.0 * k, [1.0, 2.0, 3.0], 60.0)
    book.prune(1000.0)  # idle for > idle_s: learned
    assert book.learned("agent") == 5
    assert book.stages("agent") == 3
    t0 = 2000.0
    b0 = book.call("new", "agent", t0, 60.0)
    # spans learned: stage 0 = (2+1*4)/5 = 1.2, stage 1 = (2+2*4)/5 = 2, stage 2 = (2+3*4)/5 = 2.8
    assert b0.deadline_at == t0 + 60.0
    assert b0.target_at == pytest.approx(t0 + 60.0 * 1.2 / 6.0)
    book.done("new", t0 + 4.0)  # the first call took 4 s: later stages re-divide what is left
    b1 = book.call("new", "agent", t0 + 4.0, 60.0)
    assert b1.stage == 1
    assert b1.target_at == pytest.approx(t0 + 4.0 + 56.0 * 2.0 / 4.8)
    book.done("new", t0 + 5.0)
    b2 = book.call("new", "agent", t0 + 5.0, 60.0)
    assert (b2.stage, b2.target_at) == (2, t0 + 60.0)  # the last expected stage: all that is left


def test_stage_count_is_a_conditional_quantile() -> None:
    book = WorkflowBook(min_samples=4, quantile=0.9, idle_s=1.0)
    for k, n in enumerate([2, 2, 2, 2, 2, 2, 2, 2, 2, 5]):
        run_chain(book, f"w{k}", 10.0 * k, [1.0] * n, 60.0)
    book.prune(500.0)
    assert book.stages("agent") == 2  # p90 of nine 2s and one 5
    assert book.stages("agent", reached=2) == 5  # past stage 2, only the 5-call kind remains


def test_fanout_is_three_stages_and_headers_override() -> None:
    book = WorkflowBook(min_samples=1, idle_s=1.0)
    assert book.call("f", "fan", 0.0, 30.0).stage == 0
    book.done("f", 1.0)
    stages = [book.call("f", "fan", 1.0, 30.0).stage for _ in range(4)]
    assert stages == [1, 1, 1, 1]  # sent together after the root: one stage
    for t in (3.0, 3.5, 4.0, 5.0):
        book.done("f", t)
    assert book.call("f", "fan", 5.0, 30.0).stage == 2
    book.done("f", 6.0)
    book.prune(10.0)
    assert book.stages("fan") == 3
    # a client that knows: x-workflow-stages 4, nothing learned for its kind -> equal shares
    b = book.call("h", "other", 100.0, 40.0, stage=0, stages=4)
    assert b.target_at == pytest.approx(110.0)
    b = book.call("h", "other", 105.0, 40.0, stage=2, stages=4)  # jumped to stage 3 of 4
    assert (b.stage, b.target_at) == (2, pytest.approx(105.0 + 35.0 / 2))


def test_live_map_is_pruned_by_time() -> None:
    book = WorkflowBook(retain_s=10.0)
    book.call("a", "k", 0.0, 5.0)
    book.call("b", "k", 0.0, 50.0)
    book.prune(14.0)
    assert len(book) == 2
    book.prune(16.0)  # a's deadline (5) + retain (10) has passed; b's not
    assert len(book) == 1
    # a call of a dropped workflow starts a new one
    assert book.call("a", "k", 20.0, 5.0).deadline_at == 25.0


# -- just-enough placement --------------------------------------------------------------


class Fleet:
    def __init__(self, bins: Mapping[str, str], loads: Mapping[str, int] | None = None) -> None:
        self.clock = ManualClock()
        backends = BackendSet([Backend(b, f"http://{b}", tier=t) for b, t in bins.items()], TIERS)
        self.tracker = Tracker(
            self.clock,
            backends,
            Health(bins),
            StaticLatency(STEP, limits=LIMITS),
            StaticLengths(50),
        )
        self.rid = 10_000
        tiers = backends.tier_by_name
        for b, n in (loads or {}).items():
            for _ in range(n):
                self.resident(tiers[bins[b]], b)

    def resident(self, t: Tier, b: str) -> RequestInfo:
        self.rid += 1
        req = RequestInfo(self.rid, t, 0.0, prompt_tokens=10, max_tokens=None, output_bound=50)
        self.tracker.on_arrival(req)
        self.tracker.on_dispatch(req.rid, b)
        self.tracker.on_tokens(req.rid, 1)
        return req

    def decide(self, pol: Tempo, req: RequestInfo) -> Dispatch | Defer:
        self.tracker.on_arrival(req)
        d = pol.select(req, self.tracker.snapshot(req))
        assert isinstance(d, Dispatch | Defer), d
        if isinstance(d, Dispatch):
            self.tracker.on_dispatch(req.rid, d.backends[0])
            pol.on_dispatch(req, d.backends[0])
        return d


def tempo(clock: ManualClock, **params: object) -> Tempo:
    pol = registry.build("tempo", {"rebalance": False, **params}, PolicyContext(clock))
    assert isinstance(pol, Tempo)
    return pol


def req(
    t: Tier, rid: int = 1, deadline: float | None = None, bound: int = 50, at: float = 0.0
) -> RequestInfo:
    d = t.slo.deadline_s if deadline is None else deadline
    return RequestInfo(
        rid,
        t,
        at,
        prompt_tokens=10,
        max_tokens=None,
        output_bound=bound,
        deadline_at=None if d is None else at + d,
    )


BINS = {"l1": "lat", "l2": "lat", "d1": "dl", "d2": "dl", "b1": "be"}


def test_deadline_work_goes_to_the_loosest_server_that_meets_it() -> None:
    f = Fleet(BINS, {"d1": 5, "d2": 20})
    pol = tempo(f.clock)
    d = f.decide(pol, req(DL))
    assert isinstance(d, Dispatch) and d.backends[0] == "b1"  # best-effort server: the loosest
    # the loosest bin cannot meet it (200 residents: 0.21 s steps x 100 tokens > 17 s): its own bin,
    # the most loaded server there that still does (just enough, not the emptiest)
    f2 = Fleet(BINS, {"b1": 200, "d1": 5, "d2": 20})
    d2 = f2.decide(tempo(f2.clock), req(DL, bound=100))
    assert isinstance(d2, Dispatch) and d2.backends[0] == "d2"
    # spread: the least loaded of that bin
    f3 = Fleet(BINS, {"b1": 200, "d1": 5, "d2": 20})
    d3 = f3.decide(tempo(f3.clock, deadline_placement="spread"), req(DL, bound=100))
    assert isinstance(d3, Dispatch) and d3.backends[0] == "d1"


def test_deadline_work_rides_on_latency_servers_only_at_their_pace() -> None:
    full = {"b1": 400, "d1": 400, "d2": 400}  # no room meeting the deadline off the latency bin
    # 5 s for 50 tokens: a 50 ms pace (the latency bin's TPOT) finishes in 2.5 s: it may ride there
    f = Fleet(BINS, {**full, "l1": 10})
    d = f.decide(tempo(f.clock), req(DL, deadline=5.0))
    assert isinstance(d, Dispatch) and d.backends[0] in ("l1", "l2")
    # 2 s for 50 tokens needs < 34 ms steps: meetable on an idle latency server now, but the
    # latency tier may fill it up to 50 ms: not placed there
    f2 = Fleet(BINS, {**full, "l1": 10})
    d2 = f2.decide(tempo(f2.clock, deadline_margin=0.0), req(DL, deadline=2.0))
    assert isinstance(d2, Defer)
    # never while the latency tier waits in the router queue (the room is theirs)
    f3 = Fleet(BINS, {**full, "l1": 10})
    f3.tracker.on_arrival(req(LAT, rid=99))
    d3 = f3.decide(tempo(f3.clock), req(DL, deadline=5.0))
    assert isinstance(d3, Defer)


def test_a_stage_budget_is_scheduled_for_and_the_workflow_deadline_is_the_fallback() -> None:
    f = Fleet(BINS, {"b1": 300, "d1": 100, "d2": 100})  # steps: b1 0.31 s, d 0.11 s
    pol = tempo(f.clock)
    # a workflow call: 60 s for the workflow, 8 s for this stage; bound 50 -> needs steps < 0.136 s
    r = replace(req(WF), target_at=8.0)
    d = f.decide(pol, r)
    assert isinstance(d, Dispatch) and d.backends[0] in ("d1", "d2") and d.reason == "within its stage budget"
    # a stage budget nothing meets: placed for the workflow's deadline (the loosest server)
    r2 = replace(req(WF, rid=2), target_at=1.0)
    d2 = f.decide(pol, r2)
    assert (
        isinstance(d2, Dispatch) and d2.backends[0] == "b1" and d2.reason == "within its workflow's deadline"
    )


def test_residents_deadlines_cap_later_placements() -> None:
    f = Fleet({"d1": "dl", "b1": "be"})
    pol = tempo(f.clock)
    # a tight deadline resident on b1: 50 tokens in 1.5 s -> tolerates steps up to ~25 ms
    d = f.decide(pol, req(DL, rid=1, deadline=1.5))
    assert isinstance(d, Dispatch) and d.backends[0] == "b1"
    cap = pol.min_cap("b1")
    assert 0.015 < cap < 0.03
    # fill with best effort: none may push b1's step past the cap; the rest go to d1 or wait
    placed = {"b1": 0, "d1": 0}
    for k in range(40):
        got = f.decide(pol, req(BE, rid=100 + k))
        if isinstance(got, Dispatch):
            placed[got.backends[0]] += 1
    n_b1 = f.tracker.snapshot().loads["b1"].running
    assert STEP.c0_s + STEP.c_batch_s * n_b1 <= cap
    assert placed["d1"] > 0 and n_b1 < 40
    # once the resident finishes, its cap goes
    out = f.tracker.on_finish(1, Status.OK)
    assert out is not None
    pol.on_finish(out)
    assert pol.min_cap("b1") == float("inf")


@pytest.mark.parametrize("seed", range(20))
def test_best_effort_never_delays_an_slo_request_that_could_meet_its_deadline(seed: int) -> None:
    """Random fleets filled through tempo with deadline and latency work, then best effort:
    (1) while a deadline request waits in the queue, best effort waits; (2) a best-effort
    placement never pushes a server's predicted step past a deadline resident's cap, nor a
    latency server past its spare room (so past its TPOT)."""
    rng = random.Random(seed)
    bins = {f"s{i}": rng.choice(["lat", "dl", "be"]) for i in range(6)}
    f = Fleet(bins, {b: rng.randrange(5, 60) for b in bins})
    pol = tempo(f.clock)
    rid = 1
    for _ in range(30):
        rid += 1
        f.decide(pol, req(DL, rid=rid, deadline=rng.uniform(2.0, 30.0), bound=rng.randrange(10, 200)))
    # 400 tokens in 5 s: met on an idle server (11 ms steps), on none of these (>= 16 ms): it waits
    waiting = req(DL, rid=9999, deadline=5.0, bound=400)
    f.tracker.on_arrival(waiting)
    assert isinstance(pol.select(waiting, f.tracker.snapshot(waiting)), Defer)
    assert isinstance(pol.select(req(BE, rid=9998), f.tracker.snapshot()), Defer)
    f.tracker.on_finish(waiting.rid, Status.CANCELLED)
    for _ in range(60):
        rid += 1
        d = f.decide(pol, req(BE, rid=rid))
        if isinstance(d, Defer):
            continue
        b = d.backends[0]
        load = f.tracker.snapshot().loads[b]
        step = STEP.c0_s + STEP.c_batch_s * load.running
        assert step <= pol.min_cap(b) + 1e-12
        if bins[b] == "lat":  # spare room only: c0 + 0.25 (0.95 TPOT - c0), one more of its size fits
            assert step + STEP.c_batch_s <= STEP.c0_s + 0.25 * (0.95 * 0.050 - STEP.c0_s) + 1e-12


def test_params_are_validated() -> None:
    with pytest.raises(ParamError) as e:
        registry.build(
            "tempo",
            {"deadline_margin": 2, "deadline_placement": "x", "nope": 1},
            PolicyContext(ManualClock()),
        )
    paths = {p for p, _ in e.value.errors}
    assert paths == {"deadline_margin", "deadline_placement", "nope"}


def test_match_placement_keeps_tight_and_loose_deadline_work_apart() -> None:
    f = Fleet({"d1": "dl", "d2": "dl"}, {"d1": 5, "d2": 5})
    pol = tempo(f.clock)  # match: the default
    tight = f.decide(pol, req(DL, rid=1, deadline=1.5))  # 50 tokens in 1.5 s: steps <= ~25 ms
    assert isinstance(tight, Dispatch)
    t_srv = tight.backends[0]
    other = "d2" if t_srv == "d1" else "d1"
    # a loose request (60 s) joins the server no tight resident holds to its pace, though
    # the other is the more loaded (pack would take it)
    loose = f.decide(pol, req(DL, rid=2, deadline=60.0))
    assert isinstance(loose, Dispatch) and loose.backends[0] == other
    pack = tempo(f.clock, deadline_placement="pack")
    f2 = Fleet({"d1": "dl", "d2": "dl"}, {"d1": 5, "d2": 5})
    t2 = f2.decide(pack, req(DL, rid=1, deadline=1.5))
    assert isinstance(t2, Dispatch)
    l2 = f2.decide(pack, req(DL, rid=2, deadline=60.0))
    assert isinstance(l2, Dispatch) and l2.backends[0] == t2.backends[0]
    # another tight request joins the tight server, not the loose one
    tight2 = f.decide(pol, req(DL, rid=3, deadline=1.5))
    assert isinstance(tight2, Dispatch) and tight2.backends[0] == t_srv


def test_latency_work_may_use_a_looser_server_that_keeps_its_tpot() -> None:
    # the latency bin full (its 400 residents' step is past the 50 ms TPOT); the deadline
    # servers run far below it
    f = Fleet({"l1": "lat", "d1": "dl", "d2": "dl"}, {"l1": 400, "d1": 20, "d2": 5})
    assert isinstance(f.decide(tempo(f.clock), req(LAT, rid=1)), Defer)  # polyserve's rules: it waits
    pol = tempo(f.clock, latency_anywhere=True)
    d = f.decide(pol, req(LAT, rid=2))
    assert isinstance(d, Dispatch) and d.backends[0] == "d1"  # the most loaded that keeps it
    # never past a deadline resident's cap: a tight resident on d2, d1 filled to its TPOT
    f2 = Fleet({"l1": "lat", "d1": "dl"}, {"l1": 400})
    pol2 = tempo(f2.clock, latency_anywhere=True)
    assert isinstance(f2.decide(pol2, req(DL, rid=1, deadline=1.5)), Dispatch)
    cap = pol2.min_cap("d1")
    for k in range(60):
        f2.decide(pol2, req(LAT, rid=10 + k))
    n = f2.tracker.snapshot().loads["d1"].running
    assert n > 1 and STEP.c0_s + STEP.c_batch_s * n <= cap


def test_the_autoscaling_wrapper_passes_on_what_the_admission_core_asks() -> None:
    """With autoscaling on, the policy runs inside ``DeferWatch``: the admission core must
    still see the policy's queue order and its workflow wait (it read the defaults)."""
    from slorouter.actuation.scaling import DeferWatch
    from slorouter.admission.core import queue_order, wait_to_workflow_deadline

    class Sink:
        def on_defer(self, tier: str, now: float) -> None:
            pass

    clock = ManualClock(0.0)
    for params, order, wf in (
        ({"queue_order": "gain", "workflow_wait": "workflow"}, "gain", True),
        ({"queue_order": "slack", "workflow_wait": "call"}, "slack", False),
    ):
        inner = tempo(clock, **params)
        wrapped = DeferWatch(inner, Sink())
        assert (queue_order(wrapped), wait_to_workflow_deadline(wrapped)) == (order, wf)
        assert (queue_order(inner), wait_to_workflow_deadline(inner)) == (order, wf)
