"""The admission core's overload rules (docs/policies.md §9): every queued
request leaves by a bound, every refusal is a 429 whose Retry-After is the predicted
drain time, and an overloaded queue serves the densest work first, freshest within it.

A real policy (``slo-pack``) and tracker on one server that holds a single sequence
(``max_num_seqs`` 1): one resident request keeps it full, so everything else waits."""

from __future__ import annotations

import math

import pytest

from slorouter.admission import AdmissionCore, AdmissionQueue, priority
from slorouter.admission.overload import BEST_EFFORT_WAIT_S, default_max_wait, workflow_max_wait
from slorouter.clock import ManualClock
from slorouter.models.static import EngineLimits, LinearStep, StaticLatency, StaticLengths
from slorouter.policy import registry
from slorouter.policy.base import PolicyContext
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker
from slorouter.values import Decision, Dispatch, Reject, RequestInfo, Slo, SloClass, Status, Tier, WhenLate

STEP = LinearStep(c0_s=0.010, c_batch_s=1e-4, c_kv_s=0.0, c_prefill_s=0.0)
ONE_SEQ = EngineLimits(max_num_seqs=1, kv_capacity_tokens=10_000_000, max_batched_tokens=4096)
CHAT = Tier("chat", Slo(SloClass.LATENCY, ttft_s=1.0, tpot_s=0.05), rank=0)  # when_late: reject
LAX = Tier("lax", Slo(SloClass.LATENCY, ttft_s=2.0, tpot_s=0.05), rank=1, when_late=WhenLate.BEST_EFFORT)
BULK = Tier("bulk", Slo(SloClass.BEST_EFFORT), rank=2)
TOOL = Tier("tool", Slo(SloClass.DEADLINE, deadline_s=20.0), rank=1)
AGENT = Tier("agent", Slo(SloClass.WORKFLOW, deadline_s=20.0), rank=1)  # 20 s per call


class Seen:
    """The core's ``observe`` hook, kept."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str, str]] = []

    def __call__(self, tier: str, wait: float, outcome: str, reason: str) -> None:
        self.rows.append((tier, wait, outcome, reason))


def setup(
    max_wait_s: float | None = None,
    max_queue: int | None = None,
    policy: str = "slo-pack",
    resident_tier: Tier = BULK,
) -> tuple[AdmissionCore, Seen]:
    clock = ManualClock()
    tiers = (CHAT, LAX, BULK, TOOL, AGENT)
    server_tier = "chat" if resident_tier is BULK else resident_tier.name
    backends = BackendSet([Backend("s0", "http://s0", tier=server_tier)], tiers)
    tracker = Tracker(
        clock, backends, Health(["s0"]), StaticLatency(STEP, limits=ONE_SEQ), StaticLengths(1000)
    )
    seen = Seen()
    core = AdmissionCore(
        registry.build(policy, {}, PolicyContext(clock)),
        tracker,
        max_wait_s=max_wait_s,
        max_queue=max_queue,
        observe=seen,
    )
    due = None if resident_tier is BULK else 1e9
    resident = RequestInfo(0, resident_tier, 0.0, 10, None, 1000, deadline_at=due)
    tracker.on_arrival(resident)
    assert isinstance(core.arrive(resident)[0][1], Dispatch)  # the server is full from now on
    return core, seen


def arrive(core: AdmissionCore, rid: int, tier: Tier, bound: int = 1000) -> list[tuple[int, Decision]]:
    r = RequestInfo(rid, tier, core.tracker.clock.now(), 10, None, bound)
    core.tracker.on_arrival(r)
    return [(q.rid, d) for q, d in core.arrive(r)]


def run_timers(core: AdmissionCore, until: float) -> list[tuple[float, int, Decision]]:
    """Fire the core's timer as a driver would, up to ``until``."""
    clock = core.tracker.clock
    assert isinstance(clock, ManualClock)
    out: list[tuple[float, int, Decision]] = []
    while (at := core.next_timer()) is not None and at <= until:
        clock.set(max(at, clock.now()))
        out += [(clock.now(), r.rid, d) for r, d in core.wake()]
    return out


# one request of bound 1000 at TPOT 50 ms on a 1-sequence server: 1000 × (10 + 0.1) ms
COST = 1000 * 0.0101


def test_a_late_request_is_answered_429_within_its_ttft_with_the_drain_time() -> None:
    core, seen = setup()
    for rid in (1, 2, 3):
        core.tracker.clock.set(0.1 * rid)  # type: ignore[attr-defined]
        assert arrive(core, rid, CHAT) == []  # nothing fits: all three wait
    got = run_timers(core, until=5.0)
    assert [rid for _, rid, _ in got] == [1, 2, 3]
    for k, (at, rid, d) in enumerate(got):
        assert isinstance(d, Reject) and d.status == 429
        assert at <= 0.1 * rid + 1.0  # decided within the TTFT budget, not after it
        # Retry-After: the work still queued behind it over the one server (at least 1 s)
        assert d.retry_after_s == pytest.approx(max(1.0, (2 - k) * COST))
    assert [r[2:] for r in seen.rows[1:]] == [("rejected", "late")] * 3
    assert len(core) == 0


def test_a_best_effort_tier_waits_for_spare_room_until_its_limit() -> None:
    core, seen = setup()
    assert arrive(core, 1, LAX) == []
    got = run_timers(core, until=10.0)
    assert len(got) == 1
    at, rid, d = got[0]
    assert rid == 1 and isinstance(d, Reject) and d.status == 429
    assert at == pytest.approx(2.0 + 1.0)  # TTFT + 1 s: held late, never past its limit
    assert seen.rows[-1][2:] == ("rejected", "wait_limit")


def test_an_explicit_wait_limit_applies_to_every_tier() -> None:
    core, _ = setup(max_wait_s=0.25)
    assert arrive(core, 1, BULK) == []
    assert arrive(core, 2, TOOL) == []
    got = run_timers(core, until=10.0)
    assert {rid for _, rid, _ in got} == {1, 2} and all(at == pytest.approx(0.25) for at, _, _ in got)


def test_default_wait_limits_follow_from_the_objectives() -> None:
    assert default_max_wait(CHAT) == pytest.approx(2.0)  # TTFT + 1 s
    assert default_max_wait(TOOL) == pytest.approx(20.0)  # the deadline
    assert default_max_wait(BULK) == BEST_EFFORT_WAIT_S


@pytest.mark.parametrize("policy", ["slo-pack", "polyserve", "tempo"])
def test_a_workflow_call_waits_for_its_workflows_deadline_only_under_tempo(policy: str) -> None:
    # a call of a workflow due 80 s after it was sent; its tier's deadline is 20 s per call
    core, seen = setup(policy=policy, resident_tier=AGENT)  # a resident call that never ends
    call = RequestInfo(1, AGENT, 0.0, 10, None, 1000, workflow_id="w", deadline_at=80.0)
    core.tracker.on_arrival(call)
    assert core.arrive(call) == []  # the one server is full: it waits
    got = run_timers(core, until=100.0)
    assert len(got) == 1
    at, rid, d = got[0]
    assert rid == 1 and isinstance(d, Reject) and d.status == 429
    if policy == "tempo":
        # held while its workflow could still make it: shed only when it could not even on an
        # idle server (80 s - 1000 steps of ~10.1 ms - its first token), as late
        assert 69.0 < at < 70.0
        assert seen.rows[-1][2:] == ("rejected", "late")
    else:  # the tier's per-call limit (the behaviour polyserve and slo-pack keep)
        assert at == pytest.approx(20.0)
        assert seen.rows[-1][2:] == ("rejected", "wait_limit")


def test_workflow_wait_limit_is_the_longer_of_the_tiers_and_its_deadline() -> None:
    call = RequestInfo(1, AGENT, 5.0, 10, None, 100, deadline_at=85.0)
    assert workflow_max_wait(call) == pytest.approx(80.0)
    early = RequestInfo(2, AGENT, 5.0, 10, None, 100, deadline_at=10.0)
    assert workflow_max_wait(early) == pytest.approx(20.0)  # never shorter than the tier's
    assert workflow_max_wait(RequestInfo(3, BULK, 0.0, 10, None, 100)) == BEST_EFFORT_WAIT_S


def test_a_configured_queue_count_refuses_at_once() -> None:
    core, seen = setup(max_queue=1)
    assert arrive(core, 1, BULK) == []
    [(rid, d)] = arrive(core, 2, BULK)
    assert rid == 2 and isinstance(d, Reject) and d.status == 429 and d.retry_after_s is not None
    assert seen.rows[-1][3] == "queue_full"


def test_an_overloaded_queue_refuses_an_arrival_denser_work_would_outlast() -> None:
    core, seen = setup()
    for rid in (1, 2):
        assert arrive(core, rid, CHAT, bound=10) == []  # cheap: 10 tokens
    core.tracker.clock.set(0.5)  # type: ignore[attr-defined]
    assert arrive(core, 3, CHAT, bound=10) == []
    got = run_timers(core, until=0.995)  # the first two turn late: the queue is overloaded
    assert [rid for _, rid, _ in got] == [1, 2]
    assert core.queue.overloaded and 3 in core.queue
    # an expensive request (bound 1000) behind cheaper (denser) work worth more than its slack
    for rid in range(10, 300):
        arrive(core, rid, CHAT, bound=10)
    [(rid, d)] = arrive(core, 400, CHAT, bound=1000)
    assert rid == 400 and isinstance(d, Reject) and d.status == 429
    assert seen.rows[-1][3] == "overload"


def _req(rid: int, tier: Tier, arrival: float) -> RequestInfo:
    return RequestInfo(rid, tier, arrival, 100, None, 100)


def test_overload_order_is_densest_first_then_most_slack() -> None:
    q = AdmissionQueue()
    old, mid, new = _req(1, LAX, 0.0), _req(2, LAX, 0.5), _req(3, LAX, 1.0)
    dense = _req(4, LAX, 0.2)
    for r, bucket in ((old, 0), (mid, 0), (new, 0), (dense, 5)):
        q.push(r, priority(r), bucket=bucket)
    q.push(_req(5, LAX, -5.0), priority(_req(5, LAX, -5.0)))  # late by now: trips overload
    assert [r.rid for r in q.ordered(0.0)] == [4, 3, 2, 1, 5]
    assert q.overloaded and q.is_late(5)
    order: list[int] = []

    def decide(r: RequestInfo) -> Decision:
        order.append(r.rid)
        return Dispatch(("s0",))

    q.drain(decide, now=0.0)
    assert q.overloaded is False  # the on-time lane ran empty: back to slack order
    assert order == [4, 3, 2, 1, 5]  # densest, then the freshest (most slack); late lane last


def test_without_overload_the_order_is_the_latest_useful_start() -> None:
    q = AdmissionQueue()
    rs = [_req(1, LAX, 0.0), _req(2, LAX, 0.5), _req(3, CHAT, 0.9)]
    for r, bucket in zip(rs, (0, 9, 3), strict=True):
        q.push(r, priority(r), bucket=bucket)
    assert not q.overloaded
    assert [r.rid for r in q.ordered(0.0)] == [3, 1, 2]  # 1.9, 2.0, 2.5: EDF, density unused
    assert math.isclose(q.work, 0.0)


def test_a_request_late_on_arrival_is_served_best_effort_not_refused() -> None:
    """Its TTFT (5 ms) is shorter than its prefill on an idle server (10.1 ms): the load
    did not make it late, so a 429 saying "retry later" would be wrong."""
    core, seen = setup()
    snap_tier = Tier("snap", Slo(SloClass.LATENCY, ttft_s=0.005, tpot_s=0.05), rank=0)  # when_late: reject
    assert arrive(core, 1, snap_tier) == []  # waits: the server is full
    assert not core.queue.waiting_on_time(0.0)  # in the late lane, and no sign of overload
    assert core.queue.is_late(1) and not core.queue.overloaded
    core.tracker.clock.set(0.5)  # type: ignore[attr-defined]
    core.tracker.on_finish(0, Status.OK)  # the resident leaves
    [(r, d)] = core.wake()
    assert r.rid == 1 and isinstance(d, Dispatch)
    assert seen.rows[-1][2:] == ("dispatched", "")
