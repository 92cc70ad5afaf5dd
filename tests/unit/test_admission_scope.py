"""Overload is judged where a request can go (docs/policies.md §9, issue 16's real-vLLM
run): ``polyserve`` with two bins — server ``e0`` for a tight tier, ``e1`` for a loose
one — each holding a single sequence (``max_num_seqs`` 1, so loose overflow into ``e0``
never fits: it would take the host tier's last place).

The loose bin is overloaded (its requests expire in the queue, cheap denser loose work
is still waiting); a tight request must be judged by its own bin: served when ``e0`` has
room, queued (not shed) when it has none and its bin is not overloaded, and told a
``Retry-After`` from its own bin's queue. Before scopes, the core shed it from fleet-wide
figures — the loose work, denser per unit of capacity, over both servers — before the
policy saw it (743 of 748 tight requests refused on the two real servers).
"""

from __future__ import annotations

import math

import pytest

from slorouter.admission import AdmissionCore, AdmissionQueue, priority
from slorouter.clock import ManualClock
from slorouter.models.static import EngineLimits, LinearStep, StaticLatency, StaticLengths
from slorouter.policy import registry
from slorouter.policy.base import PolicyContext
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker
from slorouter.values import Decision, Dispatch, Reject, RequestInfo, Slo, SloClass, Status, Tier

STEP = LinearStep(c0_s=0.010, c_batch_s=1e-4, c_kv_s=0.0, c_prefill_s=0.0)
ONE_SEQ = EngineLimits(max_num_seqs=1, kv_capacity_tokens=10_000_000, max_batched_tokens=4096)
TIGHT = Tier("tight", Slo(SloClass.LATENCY, ttft_s=1.0, tpot_s=0.05), rank=0)
LOOSE = Tier("loose", Slo(SloClass.LATENCY, ttft_s=2.0, tpot_s=0.2), rank=1)
RESIDENT = 1000  # a loose request that keeps e1 full (nothing here finishes it)


class Seen:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str, str]] = []

    def __call__(self, tier: str, wait: float, outcome: str, reason: str) -> None:
        self.rows.append((tier, wait, outcome, reason))


def setup() -> tuple[AdmissionCore, Seen]:
    clock = ManualClock()
    backends = BackendSet(
        [Backend("e0", "http://e0", tier="tight"), Backend("e1", "http://e1", tier="loose")], (TIGHT, LOOSE)
    )
    tracker = Tracker(
        clock, backends, Health(["e0", "e1"]), StaticLatency(STEP, limits=ONE_SEQ), StaticLengths(1000)
    )
    seen = Seen()
    # no bin moves: the test is about the core's judgement, not about lending e0 away
    policy = registry.build("polyserve", {"rebalance": False}, PolicyContext(clock))
    core = AdmissionCore(policy, tracker, observe=seen)
    assert arrive(core, 0, LOOSE, RESIDENT) == [(0, Dispatch(("e1",), "feasible"))]
    return core, seen


def arrive(core: AdmissionCore, rid: int, tier: Tier, bound: int) -> list[tuple[int, Decision]]:
    r = RequestInfo(rid, tier, core.tracker.clock.now(), 10, None, bound)
    core.tracker.on_arrival(r)
    return [(q.rid, d) for q, d in core.arrive(r)]


def run_timers(core: AdmissionCore, until: float) -> list[tuple[int, Decision]]:
    clock = core.tracker.clock
    assert isinstance(clock, ManualClock)
    out: list[tuple[int, Decision]] = []
    while (at := core.next_timer()) is not None and at <= until:
        clock.set(max(at, clock.now()))
        out += [(r.rid, d) for r, d in core.wake()]
    clock.set(until)
    return out


def overload_the_loose_bin(core: AdmissionCore) -> None:
    """Five loose requests wait past their TTFT (e1 is full, e0 has no room for
    overflow) while 300 cheap ones — 30 s of work, denser than any tight request of
    bound 1000 — arrived later and are still on time: the loose bin is overloaded."""
    for rid in range(1, 6):
        assert arrive(core, rid, LOOSE, 10) == []
    core.tracker.clock.set(1.5)  # type: ignore[attr-defined]
    for rid in range(10, 310):
        assert arrive(core, rid, LOOSE, 10) == []
    shed = run_timers(core, until=2.05)
    assert sorted(rid for rid, _ in shed) == [1, 2, 3, 4, 5]
    assert all(isinstance(d, Reject) and d.status == 429 for _, d in shed)
    assert core.queue.overloaded and core.queue.waiting_on_time(2.05)
    assert "loose" not in core.tracker.snapshot().loads["e0"].tier_counts  # no overflow into e0


def test_a_tight_request_with_room_in_its_bin_is_served_while_the_loose_bin_sheds() -> None:
    core, seen = setup()
    overload_the_loose_bin(core)
    got = arrive(core, 1000, TIGHT, 1000)
    assert [(rid, d.backends) for rid, d in got if isinstance(d, Dispatch)] == [(1000, ("e0",))]
    assert not [r for r in seen.rows if r[0] == "tight" and r[2] == "rejected"]


def test_a_tight_request_without_room_waits_for_its_bin_and_is_not_shed() -> None:
    core, seen = setup()
    # a tight resident fills e0 until it finishes
    assert arrive(core, 900, TIGHT, 1000) == [(900, Dispatch(("e0",), "feasible"))]
    overload_the_loose_bin(core)
    assert arrive(core, 1000, TIGHT, 1000) == []  # queued in its own (not overloaded) bin
    assert 1000 in core.queue
    core.tracker.clock.set(2.5)  # type: ignore[attr-defined]
    core.tracker.on_finish(900, Status.OK)  # e0 frees before the tight request's TTFT
    got = core.wake()
    assert [(r.rid, d.backends) for r, d in got if isinstance(d, Dispatch)] == [(1000, ("e0",))]
    assert not [r for r in seen.rows if r[0] == "tight" and r[2] == "rejected"]


def test_a_tight_429_says_when_its_own_bin_drains_not_the_loose_one() -> None:
    core, seen = setup()
    assert arrive(core, 900, TIGHT, 1000) == [(900, Dispatch(("e0",), "feasible"))]
    overload_the_loose_bin(core)
    assert arrive(core, 1000, TIGHT, 10) == []  # queued in its bin (e0 is full)
    core.tracker.clock.set(2.5)  # type: ignore[attr-defined]
    assert arrive(core, 1001, TIGHT, 1000) == []  # 10.1 s of work, on time until ≈ 3.5
    got = run_timers(core, until=3.2)  # e0 never frees: 1000 turns late at ≈ 3.05
    [(rid, d)] = [(rid, d) for rid, d in got if rid >= 1000]
    assert rid == 1000 and isinstance(d, Reject) and d.status == 429
    # what waits in e0's queue (1001: 1000 steps of 10.1 ms) over e0 alone — not the
    # loose bin's 30 s over both servers, which the tight request cannot use
    assert d.retry_after_s == pytest.approx(1000 * 0.0101)
    assert seen.rows[-1][0] == "tight" and seen.rows[-1][2:] == ("rejected", "late")


def test_a_tight_bin_that_is_overloaded_itself_refuses_what_its_own_work_outlasts() -> None:
    """Each bin has its own judgement: once the tight bin is overloaded (a tight request
    expired while others wait), a tight arrival that the denser tight work queued would
    outlast is refused at once, with that work over e0 as its Retry-After."""
    core, seen = setup()
    assert arrive(core, 900, TIGHT, 1000) == [(900, Dispatch(("e0",), "feasible"))]
    assert arrive(core, 901, TIGHT, 10) == []  # turns late at ≈ 1.0: the tight bin overloads
    core.tracker.clock.set(0.5)  # type: ignore[attr-defined]
    for rid in range(902, 1000):
        assert arrive(core, rid, TIGHT, 10) == []  # 98 × 0.101 s of cheap tight work, on time
    assert [rid for rid, _ in run_timers(core, until=1.0)] == [901]
    [(rid, d)] = arrive(core, 1000, TIGHT, 1000)
    assert rid == 1000 and isinstance(d, Reject) and d.status == 429
    assert d.retry_after_s == pytest.approx(98 * 10 * 0.0101)
    assert seen.rows[-1][2:] == ("rejected", "overload")


def test_polyserve_scopes_are_its_bins_and_the_tighter_ones() -> None:
    core, _ = setup()
    snap = core.tracker.snapshot()
    tight = core.policy.scope(RequestInfo(1, TIGHT, 0, 10, None, 10), snap)
    loose = core.policy.scope(RequestInfo(2, LOOSE, 0, 10, None, 10), snap)
    assert tight.home != loose.home
    assert tight.reach == (tight.home,) and tight.servers == 1  # never overflows downward
    assert loose.reach == (loose.home, tight.home) and loose.servers == 2


def test_overload_ends_one_wait_limit_after_the_last_expiry() -> None:
    """Closed-loop clients keep the on-time lane from ever running empty; one expiry must
    not keep the queue in overload order for good."""
    q = AdmissionQueue()
    patient = Tier("patient", Slo(SloClass.LATENCY, ttft_s=10.0, tpot_s=0.2), rank=1)
    first = RequestInfo(1, LOOSE, 0.0, 10, None, 10)
    q.push(first, priority(first), expires_at=3.0)  # a wait limit of 3 s
    rid = 2
    for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5):
        r = RequestInfo(rid, patient, t, 10, None, 10)  # a fresh arrival every 0.5 s
        q.push(r, priority(r), expires_at=t + 11.0)
        rid += 1
        due = q.expire(t + 0.01)
        assert [x.rid for x, _ in due] == ([1] if t == 2.0 else [])  # latest start 2.0
        assert q.waiting_on_time(t + 0.01)  # the lane never runs empty
        assert q.overloaded == (2.0 <= t < 5.0)  # 2.01 + the expired request's 3 s


def test_one_homes_overload_does_not_reorder_anothers() -> None:
    q = AdmissionQueue()
    a, b = RequestInfo(1, TIGHT, 0.0, 10, None, 10), RequestInfo(2, TIGHT, 0.3, 10, None, 10)
    q.push(a, priority(a), bucket=0, home="tight")
    q.push(b, priority(b), bucket=5, home="tight")  # denser, later
    c, d = RequestInfo(3, LOOSE, 0.0, 10, None, 10), RequestInfo(4, LOOSE, 0.5, 10, None, 10)
    q.push(c, priority(c), bucket=0, home="loose")
    q.push(d, priority(d), bucket=5, home="loose")
    late = RequestInfo(5, LOOSE, -5.0, 10, None, 10)
    q.push(late, priority(late), home="loose")
    assert [r.rid for r, _ in q.expire(0.0)] == [5]
    assert q.books.hot("loose") and not q.books.hot("tight")
    # the overloaded loose home densest first; the tight one still earliest latest start
    assert [r.rid for r in q.ordered(0.0)] == [4, 3, 1, 2]
    assert math.isclose(q.work, 0.0)
