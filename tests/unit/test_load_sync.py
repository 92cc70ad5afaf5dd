"""Several router processes, one load picture: each publishes its own row, all sum
(slorouter.state.sync), with the herding quota and the expiry of a dead holder's row."""

from __future__ import annotations

from slorouter.clock import ManualClock
from slorouter.models.static import LinearStep, StaticLatency, StaticLengths
from slorouter.policy.feasibility import FeasibilityParams, Need, assess
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.load import BackendLoad
from slorouter.state.store import MemoryStore
from slorouter.state.sync import LoadSync, Row
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Slo, SloClass, Status, Tier

FAST = Tier("fast", Slo(SloClass.LATENCY, 1.0, 0.05), rank=0)
SLOW = Tier("slow", Slo(SloClass.LATENCY, 5.0, 0.2), rank=1)
BS = BackendSet(
    [Backend("b0", "http://b0", tier="fast"), Backend("b1", "http://b1", tier="slow")], (FAST, SLOW)
)


def holder(clock: ManualClock, name: str, quota: bool = False) -> tuple[Tracker, LoadSync]:
    t = Tracker(clock, BS, Health(["b0", "b1"]), StaticLatency(), StaticLengths(20))
    return t, LoadSync(t, name, quota=quota)


def place(t: Tracker, rid: int, backend: str, tier: Tier = FAST, prompt: int = 100) -> None:
    t.on_arrival(RequestInfo(rid, tier, t.clock.now(), prompt, None, 20))
    t.on_dispatch(rid, backend)


def tick(store: MemoryStore, *holders: tuple[Tracker, LoadSync]) -> None:
    now = holders[0][0].clock.now()
    store.now = now
    for _, s in holders:
        store.publish(s.row(now))
    for _, s in holders:
        s.absorb(store.rows(), now)


def counters(t: Tracker, b: str) -> tuple[int, ...]:
    return t.loads[b].as_tuple()


def test_views_are_the_sum_of_the_holders_rows() -> None:
    clock = ManualClock()
    store = MemoryStore()
    a, b = holder(clock, "a"), holder(clock, "b")
    for rid in range(3):
        place(a[0], rid, "b0")
    place(b[0], 10, "b0", SLOW, prompt=50)
    place(b[0], 11, "b1", SLOW)
    b[0].on_tokens(10, 1)
    tick(store, a, b)
    # the same picture in both, equal to one tracker holding everything
    one = Tracker(clock, BS, Health(["b0", "b1"]), StaticLatency(), StaticLengths(20))
    for rid in range(3):
        place(one, rid, "b0")
    place(one, 10, "b0", SLOW, prompt=50)
    place(one, 11, "b1", SLOW)
    one.on_tokens(10, 1)
    for bid in ("b0", "b1"):
        assert counters(a[0], bid) == counters(b[0], bid) == counters(one, bid)
        assert a[0].loads[bid].tier_counts == b[0].loads[bid].tier_counts == one.loads[bid].tier_counts
    assert a[0].loads["b0"].running == 4 and a[0].loads["b0"].prefill_tokens == 300
    # b's resident 10 has produced a token: its slack entry reaches a
    assert len(a[0].loads["b0"].slack) == 1 and a[0].loads["b0"].slack == b[0].loads["b0"].own_slack
    # a finish is seen by the other holder at the next tick, not before
    a[0].on_finish(0, Status.OK)
    assert a[0].loads["b0"].running == 3 and b[0].loads["b0"].running == 4
    tick(store, a, b)
    assert b[0].loads["b0"].running == 3
    # each publishes only its own counts
    assert store.rows()["a"].loads["b0"][0] == 2 and store.rows()["b"].loads["b0"][0] == 1
    # everything finished: every counter everywhere is zero again
    for r in (1, 2):
        a[0].on_finish(r, Status.OK)
    for r in (10, 11):
        b[0].on_finish(r, Status.OK)
    tick(store, a, b)
    for t, _ in (a, b):
        assert all(ld.is_zero() for ld in t.loads.values())
        assert all(not ld.slack for ld in t.loads.values())


def test_at_a_cold_start_the_holders_share_equally() -> None:
    """No holder has had a request yet: each takes an equal share (not the whole room),
    so a first burst reaching every holder at once is split between them."""
    clock = ManualClock()
    store = MemoryStore()
    a, b = holder(clock, "a", quota=True), holder(clock, "b", quota=True)
    tick(store, a, b)
    assert a[1].share == b[1].share == 0.5
    place(a[0], 1, "b1", prompt=100)
    assert a[0].loads["b1"].running == 2  # itself + the phantom of b's turn
    # ... and on the line of turns one of the two stands second on each server
    assert sorted(bool(a[0].loads[x].ahead[0]) + bool(b[0].loads[x].ahead[0]) for x in ("b0", "b1")) == [1, 1]
    alone = holder(clock, "c", quota=True)
    tick(MemoryStore(), alone)
    assert alone[1].share == 1.0


def test_quota_counts_own_placements_by_the_inverse_share_until_the_next_tick() -> None:
    clock = ManualClock()
    store = MemoryStore()
    a, b = holder(clock, "a", quota=True), holder(clock, "b", quota=True)
    for rid in range(4):  # equal arrivals: each holder's share is 1/2
        (a if rid % 2 else b)[0].on_arrival(RequestInfo(100 + rid, FAST, 0.0, 10, None, 20))
    tick(store, a, b)
    assert abs(a[1].share - 0.5) < 1e-9 and a[1].peers == 1
    place(a[0], 1, "b1", prompt=100)
    # counted twice (itself + the phantom of what b may place meanwhile) ...
    assert a[0].loads["b1"].running == 2 and a[0].loads["b1"].prefill_tokens == 200
    # ... but published once, and the phantom is gone after the tick
    assert a[1].row(clock.now()).loads["b1"][0] == 1
    tick(store, a, b)
    assert a[0].loads["b1"].running == 1 == b[0].loads["b1"].running


def test_the_latency_models_labels_leave_the_phantom_out() -> None:
    """Step samples and the load at dispatch are labelled with the real global load —
    the holders' requests summed — never with the herding guard's phantom (requests the
    others might place, not running sequences)."""
    clock = ManualClock()
    store = MemoryStore()
    a, b = holder(clock, "a", quota=True), holder(clock, "b", quota=True)
    place(b[0], 50, "b1", prompt=40)  # b's request: real, seen by a after the tick
    for rid in range(3):  # equal arrivals: each holder's share is 1/2
        a[0].on_arrival(RequestInfo(100 + rid, FAST, 0.0, 10, None, 20))
    for rid in range(2):
        b[0].on_arrival(RequestInfo(200 + rid, FAST, 0.0, 10, None, 20))
    tick(store, a, b)
    place(a[0], 1, "b1", prompt=100)
    load = a[0].loads["b1"]
    assert load.running == 3  # own + b's + one phantom
    assert a[0].requests[1].at_dispatch == (1, 40, 40)  # b's request only, no phantom yet
    place(a[0], 2, "b1", prompt=100)
    assert load.running == 5
    assert a[0].requests[2].at_dispatch == (2, 140, 140)  # b's and a's first: real
    for _ in range(3):  # request 1 streams: steps run with 3 real sequences
        clock.advance(0.01)
        a[0].on_tokens(1, 1)
    out = a[0].on_finish(1, Status.OK)
    assert out is not None and out.step_samples
    # prompts 40 + 100 + 100 and the tokens so far
    assert sorted({(n, kv) for _, n, kv in out.step_samples}) == [(3, 241), (3, 242)]
    assert load.phantom == (2, 200, 200)  # what the counters hold beyond the real load
    # after the tick the phantom is gone (b's row is newer), and so is its mark
    tick(store, a, b)
    assert load.phantom == (0, 0, 0) and load.running == 2


def test_a_dead_holders_row_expires() -> None:
    clock = ManualClock()
    store = MemoryStore(ttl_s=0.5)
    a, b = holder(clock, "a"), holder(clock, "b")
    place(b[0], 1, "b0")
    tick(store, a, b)
    assert a[0].loads["b0"].running == 1
    clock.advance(1.0)  # b stops publishing (killed); a keeps ticking
    store.now = clock.now()
    store.publish(a[1].row(clock.now()))
    a[1].absorb(store.rows(), clock.now())
    assert a[0].loads["b0"].running == 0 and a[1].peers == 0


def test_rows_round_trip_and_reject_garbage() -> None:
    clock = ManualClock()
    a = holder(clock, "a")
    place(a[0], 1, "b0")
    a[0].on_tokens(1, 3)
    place(a[0], 2, "b1", SLOW)
    row = a[1].row(clock.now())
    assert row.ids == ("b0", "b1") and row.tier_counts("b1") == {"slow": 1} and len(row.slack_idx) == 1
    assert Row.from_bytes(row.to_bytes()).same(row)
    good = row.to_bytes()
    for bad in (b"{", b"[]\n", b'{"v": 99}\n', b'{"v": 2, "holder": "x"}\n', good[:-3], good + b"x"):
        try:
            Row.from_bytes(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_merge_sums_counters_and_keeps_the_least_slack() -> None:
    x, y = BackendLoad("b"), BackendLoad("b")
    x.running, x.peak_kv, x.tier_counts = 2, 100, {"fast": 2}
    y.running, y.peak_kv, y.tier_counts = 3, 50, {"fast": 1, "slow": 2}
    x.set_slack(((10.0, 5, 9.0, 0.05),))
    y.set_slack(((10.0, 1, 9.5, 0.05),))
    m = BackendLoad.merge("b", [x, y])
    assert (m.running, m.peak_kv, m.tier_counts) == (5, 150, {"fast": 3, "slow": 2})
    assert m.slack == ((10.0, 1, 9.5, 0.05), (10.0, 5, 9.0, 0.05))  # least banked slack first


def test_own_changes_since_the_last_row_call_on_due_once() -> None:
    """Event-driven publishing: the first own placement or departure after a row was built
    asks for an early exchange (once); building the row starts counting again."""
    clock = ManualClock()
    t, s = holder(clock, "a")
    due: list[float] = []
    s.on_due = lambda: due.append(clock.now())
    t.on_arrival(RequestInfo(1, FAST, clock.now(), 100, None, 20))
    assert due == [] and s.unpublished == 0  # an arrival is not a change of the row
    t.on_dispatch(1, "b0")
    clock.advance(0.01)
    place(t, 2, "b1", SLOW)
    assert due == [0.0] and s.unpublished == 2
    s.row(clock.now())
    assert s.unpublished == 0
    t.on_tokens(1, 3)  # tokens are not published early (the row counts them at the tick)
    assert due == [0.0] and s.unpublished == 0
    t.on_finish(1, Status.OK)  # a departure is
    assert due == [0.0, 0.01] and s.unpublished == 1
    t.on_finish(2, Status.OK)
    assert due == [0.0, 0.01] and s.unpublished == 2


def test_quota_shares_a_servers_room_among_the_holders_between_ticks() -> None:
    """The herding guard: until their next update, R holders (equal shares) may together
    place on a server only what its room at the synced load holds — never more than one
    request beyond it (rounding), never less than its whole requests — however many
    of them see it as the best; without the quota each would judge it feasible."""

    lin = LinearStep(c0_s=0.01, c_batch_s=0.001, c_kv_s=0.0, c_prefill_s=0.0)
    tau = 0.0505  # the TPOT budget holds 40.5 requests: room = 40.5 - running
    lim = StaticLatency().limits("b0")
    fp = FeasibilityParams()
    names = ("r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7")
    for quota in (True, False):
        for running in range(28, 42):
            clock = ManualClock()
            store = MemoryStore()
            hs = [holder(clock, n, quota=quota) for n in names]
            for rid in range(running):  # the load before the tick, placed by r0
                place(hs[0][0], rid, "b0")
            for k, (t, _) in enumerate(hs[1:]):  # equal arrivals: every share is 1/8
                for j in range(running):
                    t.on_arrival(RequestInfo(1000 + 100 * k + j, FAST, 0.0, 10, None, 20))
            tick(store, *hs)
            assert all(abs(sy.share - 1 / len(hs)) < 1e-9 for _, sy in hs)
            need = Need(RequestInfo(999, FAST, 0.0, 10, None, 20), 0.0, False)
            fits = sum(assess(need, t.loads["b0"], lin, lim, tau, fp) >= 0 for t, _ in hs)
            room = 40.5 - running
            if not quota:
                assert fits == (len(hs) if room >= 1 else 0)
            elif room < 1:
                assert fits == 0
            else:
                assert min(len(hs), int(room)) <= fits <= min(len(hs), int(room) + 1), (running, fits)
