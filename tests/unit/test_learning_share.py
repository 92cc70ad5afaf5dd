"""Several router processes, one latency model: each publishes what its model learns from
with its row, and learns from the others' (slorouter.state.learning)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from slorouter.clock import ManualClock
from slorouter.models.latency import LatencySettings, OnlineLatency
from slorouter.models.static import EngineLimits, LinearStep, StaticLatency, StaticLengths
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.learning import MAX_POINTS, LearningShare, max_row_bytes
from slorouter.state.store import MemoryStore
from slorouter.state.sync import LoadSync, Row
from slorouter.state.tracker import Tracker
from slorouter.values import Outcome, Slo, SloClass, Status, Tier

PRIOR = LinearStep(c0_s=0.010, c_batch_s=1e-4, c_kv_s=5e-8, c_prefill_s=3e-5)
TRUE = LinearStep(c0_s=0.014, c_batch_s=2e-4, c_kv_s=8e-8, c_prefill_s=3e-5)
LIMITS = EngineLimits(max_num_seqs=256, kv_capacity_tokens=400_000, max_batched_tokens=2048)
FAST = Tier("fast", Slo(SloClass.LATENCY, 1.0, 0.05), rank=0)
BS = BackendSet([Backend("b0", "http://b0", tier="fast"), Backend("b1", "http://b1", tier="fast")], (FAST,))


def model(clock: ManualClock) -> OnlineLatency:
    return OnlineLatency(clock, PRIOR, LIMITS, settings=LatencySettings(), prefill_ratio=2.0)


def process(clock: ManualClock, name: str, keep_s: float = 1.0) -> tuple[OnlineLatency, LoadSync]:
    m = model(clock)
    t = Tracker(clock, BS, Health(["b0", "b1"]), StaticLatency(), StaticLengths(20))
    return m, LoadSync(t, name, quota=False, learning=LearningShare(m, clock.now, keep_s=keep_s))


def outcome(rid: int, clock: ManualClock, rng: random.Random, tokens: int = 300) -> Outcome:
    """A finished response on b0 or b1 at a random load: its step samples, first token, lengths."""
    batch = rng.randint(1, 120)
    kv = batch * rng.randint(200, 2000)
    now = clock.now()
    samples = tuple((TRUE.at(batch, kv) * (1 + 0.3 * rng.random()), batch, kv) for _ in range(tokens - 1))
    return Outcome(
        rid,
        "fast",
        f"b{rid % 2}",
        Status.OK,
        arrival=now - 5.0,
        finished_at=now,
        prompt_tokens=rng.randint(50, 3000),
        output_tokens=tokens,
        dispatched_at=now - 5.0,
        first_token_at=now - 5.0 + 0.05 + 0.002 * batch,
        dispatch_load=(batch, kv, rng.randint(0, 4000)),
        step_samples=samples,
    )


def wire(rows: Any) -> dict[str, Row]:
    """The rows as another host reads them (through their bytes)."""
    return {h: Row.from_bytes(r.to_bytes()) for h, r in rows.items()}


def learned(m: OnlineLatency, now: float) -> dict[str, Any]:
    """What a model learned, without its window pool (the pool of responses too short for a
    window of their own is each process's: it is emptied into the windows it publishes)."""
    st = m.to_state(now)
    for b in st["backends"].values():
        del b["windows"]
    return st


@pytest.mark.parametrize("tokens", [300, 700])
def test_processes_sharing_observations_learn_the_model_one_process_learns(tokens: int) -> None:
    """Outcomes spread over two processes that share them (through the rows' bytes) give
    each the model of one process that saw them all: the same fit, digests, first-token
    excess and ρ — and the same predictions."""
    clock = ManualClock(100.0)
    rng = random.Random(7)
    (ma, a), (mb, b) = process(clock, "a"), process(clock, "b")
    one = model(clock)
    store = MemoryStore()
    for rid in range(300):
        clock.advance(0.05)
        o = outcome(rid, clock, rng, tokens)
        one.observe_outcome(o)
        (ma if rng.random() < 0.5 else mb).observe_outcome(o)
        now = clock.now()
        store.now = now
        for s in (a, b):
            store.publish(s.row(now))
        for s in (a, b):
            s.absorb(wire(store.rows()), now)
    now = clock.now()
    want = learned(one, now)
    assert want["backends"]["b0"]["outcomes"] == 150
    assert learned(ma, now) == want
    assert learned(mb, now) == want
    for m in (ma, mb):
        for batch, kv in [(1, 100), (40, 40_000), (100, 150_000)]:
            assert m.step_time("b1", batch, kv) == one.step_time("b1", batch, kv)
        assert m.limits("b0") == one.limits("b0")
    assert a.learning is not None and b.learning is not None
    assert a.learning.sent + b.learning.sent == 300
    assert a.learning.received == b.learning.sent and b.learning.received == a.learning.sent
    assert a.learning.missed == b.learning.missed == 0


def test_short_responses_share_their_fit_points_and_completed_windows() -> None:
    """Responses shorter than a window: the fit (every response's mean) is one router's
    exactly; the windows each process pools from its own responses reach the other, and
    every first token."""
    clock = ManualClock(100.0)
    rng = random.Random(3)
    (ma, a), (mb, b) = process(clock, "a"), process(clock, "b")
    one = model(clock)
    store = MemoryStore()
    for rid in range(400):
        clock.advance(0.05)
        o = outcome(rid, clock, rng, tokens=rng.randint(20, 200))
        one.observe_outcome(o)
        (ma if rid % 3 else mb).observe_outcome(o)
        store.now = clock.now()
        for s in (a, b):
            store.publish(s.row(clock.now()))
        for s in (a, b):
            s.absorb(store.rows(), clock.now())
    now = clock.now()
    for m in (ma, mb):
        got = learned(m, now)["backends"]["b0"]
        want = learned(one, now)["backends"]["b0"]
        assert got["fit"] == want["fit"] and got["outcomes"] == want["outcomes"] == 200
        # every first token too (its excess is over the step model, whose quantile ratio
        # comes from the windows: equal up to them)
        assert got["ttft"]["requests"] == want["ttft"]["requests"]
        # the windows (pooled per process: they complete at other times than one router's,
        # and the digests take at most 5 batches a second) went into both processes' digests
        assert 0.8 * want["window_batches"] <= got["window_batches"] <= 1.2 * want["window_batches"]
    assert (
        learned(ma, now)["backends"]["b0"]["window_batches"]
        == learned(mb, now)["backends"]["b0"]["window_batches"]
    )


def test_an_observation_is_learned_once_and_none_is_lost_while_the_reader_keeps_up() -> None:
    """A reader that skips some of a holder's rows (it reads less often than the holder
    publishes) or reads the same row twice learns every observation exactly once."""
    clock = ManualClock(10.0)
    rng = random.Random(1)
    (ma, a), (mb, b) = process(clock, "a", keep_s=1.0), process(clock, "b", keep_s=1.0)
    store = MemoryStore()
    assert b.learning is not None
    for rid in range(60):
        clock.advance(0.02)
        ma.observe_outcome(outcome(2 * rid, clock, rng))  # all on b0
        store.now = clock.now()
        store.publish(a.row(clock.now()))  # a publishes after every outcome ...
        if rid % 7 == 0:  # ... b reads every 7th row (0.14 s apart), twice
            b.absorb(store.rows(), clock.now())
            b.absorb(store.rows(), clock.now())
    b.absorb(store.rows(), clock.now())
    assert b.learning.received == 60 and b.learning.missed == 0
    assert mb.observations("b0") == ma.observations("b0")
    assert mb.describe("b0")["batches"] == 60


def test_a_reader_slower_than_the_rows_keep_their_observations_counts_what_it_missed() -> None:
    clock = ManualClock(10.0)
    rng = random.Random(2)
    (ma, a), (_mb, b) = process(clock, "a", keep_s=0.1), process(clock, "b")
    store = MemoryStore()
    assert b.learning is not None
    for rid in range(30):
        clock.advance(0.02)
        ma.observe_outcome(outcome(2 * rid, clock, rng))
        store.now = clock.now()
        store.publish(a.row(clock.now()))
        if rid in (4, 29):  # 0.5 s between the reads: the row keeps 0.1 s
            b.absorb(store.rows(), clock.now())
    assert b.learning.received == 5 + 6  # the first 5, then the last 0.1 s (6 outcomes)
    assert b.learning.missed == 30 - 11


def test_a_holder_restarted_under_the_same_name_is_read_from_its_new_start() -> None:
    """Workers keep their slot's name across a restart: the new log (a new epoch) starts
    again at 0 and is read, not taken for old numbers."""
    clock = ManualClock(10.0)
    rng = random.Random(4)
    (ma, a), (_mb, b) = process(clock, "w1"), process(clock, "w0")
    store = MemoryStore()
    assert b.learning is not None
    for rid in range(5):
        clock.advance(0.02)
        ma.observe_outcome(outcome(2 * rid, clock, rng))
    store.publish(a.row(clock.now()))
    b.absorb(store.rows(), clock.now())
    clock.advance(1.0)
    (ma2, a2) = process(clock, "w1")  # the restarted worker
    for rid in range(3):
        clock.advance(0.02)
        ma2.observe_outcome(outcome(2 * rid, clock, rng))
    store.now = clock.now()
    store.publish(a2.row(clock.now()))
    b.absorb(store.rows(), clock.now())
    assert b.learning.received == 8 and b.learning.missed == 0


def test_a_row_carries_a_bounded_number_of_observations_and_points() -> None:
    """However much a holder learned since its last row, the row stays bounded: the newest
    observations within MAX_POINTS fit points and windows; a reader counts the rest as missed."""
    clock = ManualClock(10.0)
    rng = random.Random(5)
    (ma, a), (_mb, b) = process(clock, "a"), process(clock, "b")
    for rid in range(200):  # long responses: 16 fit points and 16 windows each
        ma.observe_outcome(outcome(2 * rid, clock, rng, tokens=8000))
    row = a.row(clock.now())
    assert row.learned is not None
    points = sum(len(o.fit) + len(o.windows) for o in row.learned.observations)
    assert MAX_POINTS - 32 < points <= MAX_POINTS
    raw = row.to_bytes()
    empty = Row(row.holder, row.at, row.arrivals, queued=row.queued).to_bytes()
    assert len(raw) - len(empty) <= max_row_bytes()
    assert b.learning is not None
    b.absorb({"a": Row.from_bytes(raw)}, clock.now())
    assert b.learning.received == len(row.learned.observations) == 32
    # nothing published before: what fell out of the bounds is not counted as missed
    assert b.learning.missed == 0


def test_observations_of_a_backend_this_process_does_not_route_to_are_skipped() -> None:
    clock = ManualClock(10.0)
    rng = random.Random(6)
    (ma, a), (mb, _b) = process(clock, "a"), process(clock, "b")
    other = BackendSet([Backend("b1", "http://b1", tier="fast")], (FAST,))
    t = Tracker(clock, other, Health(["b1"]), StaticLatency(), StaticLengths(20))
    share = LearningShare(mb, clock.now, keep_s=1.0)
    b = LoadSync(t, "b", quota=False, learning=share)
    for rid in range(10):
        ma.observe_outcome(outcome(rid, clock, rng))
    b.absorb({"a": a.row(clock.now())}, clock.now())
    assert share.received == 5
    assert mb.observations("b0") == 0 and mb.observations("b1") == ma.observations("b1")


def test_one_process_learns_as_without_sharing() -> None:
    """Publishing its observations changes nothing in what a process itself learns."""
    clock = ManualClock(10.0)
    rng1, rng2 = random.Random(8), random.Random(8)
    plain = model(clock)
    (shared, s) = process(clock, "a")
    for rid in range(100):
        clock.advance(0.05)
        plain.observe_outcome(outcome(rid, clock, rng1, tokens=150))
        shared.observe_outcome(outcome(rid, clock, rng2, tokens=150))
        s.row(clock.now())
    assert plain.to_state(clock.now()) == shared.to_state(clock.now())


def test_rows_of_the_previous_version_are_still_read() -> None:
    row = Row("old", 10.0, 1.0, queued={"fast": 1})
    raw = row.to_bytes().replace(b'"v":3', b'"v":2', 1)
    got = Row.from_bytes(raw)
    assert got.same(row) and got.learned is None


def test_malformed_observations_are_refused() -> None:
    clock = ManualClock(10.0)
    rng = random.Random(9)
    (ma, a), (_mb, b) = process(clock, "a"), process(clock, "b")
    ma.observe_outcome(outcome(0, clock, rng))
    raw = a.row(clock.now()).to_bytes()
    assert Row.from_bytes(raw).learned is not None
    with pytest.raises(ValueError):
        Row.from_bytes(raw.replace(b'"k":1', b'"k":2', 1))  # more observations than bytes
    with pytest.raises(ValueError):
        Row.from_bytes(raw[:-1])
    # counts that do not add up to the points sent: the row's loads are read, its
    # observations skipped (and counted) when a reader decodes them
    head, body = raw.split(b"\n", 1)
    bad = Row.from_bytes(head.replace(b'"b":["b0"]', b'"b":[]', 1) + b"\n" + body)
    assert bad.learned is not None
    with pytest.raises(ValueError):
        bad.learned.since(0)
    assert b.learning is not None
    b.absorb({"a": bad}, clock.now())
    assert b.learning.bad == 1 and b.learning.received == 0
