"""The admission queue: slack order, best-effort lane, drain semantics, retry timers."""

from __future__ import annotations

import math

from slorouter.admission import AdmissionQueue, priority
from slorouter.values import Decision, Defer, Dispatch, Reject, RequestInfo, Slo, SloClass, Tier, WhenLate

# served best effort once late (the late lane); REJECT tiers leave the queue as due
CHAT = Tier("chat", Slo(SloClass.LATENCY, ttft_s=0.5, tpot_s=0.05), rank=0, when_late=WhenLate.BEST_EFFORT)
FAST = Tier(
    "fast", Slo(SloClass.LATENCY, ttft_s=0.2, tpot_s=0.02), weight=2.0, rank=0, when_late=WhenLate.BEST_EFFORT
)
BATCH = Tier("batch", Slo(SloClass.BEST_EFFORT), rank=2)
TOOL = Tier("tool", Slo(SloClass.DEADLINE, deadline_s=10.0), rank=1)


def req(rid: int, tier: Tier, arrival: float = 0.0, bound: int = 100) -> RequestInfo:
    return RequestInfo(rid, tier, arrival, prompt_tokens=100, max_tokens=None, output_bound=bound)


def test_priority_is_the_latest_useful_start() -> None:
    assert priority(req(1, CHAT, 1.0)) == 1.5
    assert priority(req(2, BATCH)) == math.inf
    # deadline: 10 s minus 100 tokens at the prior pace (no snapshot: TPOT unknown -> 0)
    assert priority(req(3, TOOL)) == 10.0


def test_order_is_by_slack_then_best_effort_fifo() -> None:
    q = AdmissionQueue()
    items = [req(1, BATCH, 0.0), req(2, CHAT, 0.0), req(3, FAST, 0.1), req(4, BATCH, 0.05), req(5, CHAT, 0.2)]
    for r in items:
        q.push(r, priority(r))
    assert [r.rid for r in q.ordered(now=0.0)] == [3, 2, 5, 1, 4]
    assert q.peek(0.0) is not None and q.peek(0.0).rid == 3  # type: ignore[union-attr]


def test_late_requests_move_behind_the_on_time_ones() -> None:
    q = AdmissionQueue()
    late, fresh = req(1, FAST, 0.0), req(2, CHAT, 1.0)
    q.push(late, priority(late))
    q.push(fresh, priority(fresh))
    assert [r.rid for r in q.ordered(now=0.5)] == [2, 1]
    assert q.is_late(1) and not q.is_late(2)


def test_drain_removes_decided_keeps_deferred_and_blocks_a_deferred_tier() -> None:
    q = AdmissionQueue(max_tries=10)
    reqs = [req(1, CHAT, 0.0), req(2, CHAT, 0.1), req(3, FAST, 0.0), req(4, BATCH, 0.0)]
    for r in reqs:
        q.push(r, priority(r))
    seen: list[int] = []

    def decide(r: RequestInfo) -> Decision:
        seen.append(r.rid)
        if r.tier is CHAT:
            return Defer("full", retry_at=5.0)
        if r.tier is FAST:
            return Reject(429, "late")
        return Dispatch(("b0",))

    out = q.drain(decide, now=0.0)
    assert seen == [3, 1, 4]  # request 2 skipped: its tier deferred in this wake-up
    assert [(r.rid, type(d).__name__) for r, d in out] == [(3, "Reject"), (4, "Dispatch")]
    assert len(q) == 2 and 1 in q and 2 in q
    assert q.next_retry(now=0.0) == 5.0
    assert q.next_retry(now=6.0) is None  # past retry times are dropped


def test_a_drain_consumes_the_retry_times_it_passed() -> None:
    # the second request of a tier is skipped after the first defers: its old retry time
    # must not stay behind in the past (a timer armed on it would fire at once, forever)
    q = AdmissionQueue()
    a, b = req(1, CHAT, 0.0), req(2, CHAT, 0.1)
    q.push(a, priority(a), retry_at=1.0)
    q.push(b, priority(b), retry_at=2.0)
    q.drain(lambda r: Defer("full", retry_at=9.0), now=3.0)
    assert q.next_retry() == 9.0


def test_drain_makes_at_most_max_tries_decisions() -> None:
    q = AdmissionQueue(max_tries=3)
    for i in range(10):
        q.push(req(i, Tier(f"t{i}", CHAT.slo)), float(i))
    calls = 0

    def decide(r: RequestInfo) -> Decision:
        nonlocal calls
        calls += 1
        return Dispatch(("b0",))

    assert len(q.drain(decide, now=0.0)) == 3
    assert calls == 3 and len(q) == 7


def test_remove_forgets_a_cancelled_request() -> None:
    q = AdmissionQueue()
    a, b = req(1, CHAT), req(2, CHAT)
    q.push(a, priority(a), retry_at=3.0)
    q.push(b, priority(b))
    assert q.remove(1) is a
    assert q.remove(1) is None
    assert [r.rid for r in q.ordered(0.0)] == [2]
    assert q.next_retry() is None
    out = q.drain(lambda r: Dispatch(("b0",)), now=0.0)
    assert [r.rid for r, _ in out] == [2] and len(q) == 0


def test_late_requests_held_for_spare_room_do_not_hide_another_tier() -> None:
    """200 late chat requests the policy holds (waiting for spare room) are older than a
    best-effort one: the drain still reaches it, and an on-time request first."""
    q = AdmissionQueue(max_tries=16)
    for i in range(200):
        r = req(i, CHAT, arrival=i * 0.001)
        q.push(r, priority(r))
    batch, fresh = req(500, BATCH, arrival=5.0), req(501, FAST, arrival=5.0)
    q.push(batch, priority(batch))
    q.push(fresh, priority(fresh))
    decided: list[int] = []

    def decide(r: RequestInfo) -> Decision:
        decided.append(r.rid)
        return Defer("held for spare room") if r.tier is CHAT else Dispatch(("b0",))

    out = q.drain(decide, now=5.0)
    assert [r.rid for r, _ in out] == [501, 500]
    assert decided == [501, 0, 500]  # one try for the held tier, then the next tier
    assert len(q) == 200 and all(q.is_late(i) for i in range(200))
