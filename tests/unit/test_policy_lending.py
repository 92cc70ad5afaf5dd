"""polyserve lends a tighter bin's spare room to looser work under ``placement: spread``
(:mod:`slorouter.policy.lending`), keeping room for the occupancy its own tier's arrivals
have met."""

from __future__ import annotations

import dataclasses
import math

import pytest

from slorouter.models.static import LinearStep
from slorouter.policy.lending import MIN_SAMPLES, Occupancy
from slorouter.policy.polyserve import PolyServe
from slorouter.values import PACED, Dispatch, Tightness
from tests.unit.test_policy_table import T20, T50, Fleet, build, request

# 10 ms + 1 ms per sequence: a t20 server holds 9 sequences within 0.95 x 20 ms
STEEP = LinearStep(c0_s=0.010, c_batch_s=1e-3, c_kv_s=0.0, c_prefill_s=0.0)
TIGHT = Tightness(PACED, 0.020)


def test_the_occupancy_level_is_the_quantile_of_what_arrivals_met() -> None:
    occ = Occupancy(quantile=0.9)
    assert occ.level(TIGHT) == 0 and occ.reserve(TIGHT, 0, 1, 0.0) == 1  # nothing seen: the floor
    for _ in range(90):
        occ.observe(TIGHT, 2, 30, 0.0)
    for _ in range(10):
        occ.observe(TIGHT, 7, 30, 0.0)
    assert occ.level(TIGHT) == 2  # 90 % of arrivals met at most 2
    occ.observe(TIGHT, 7, 30, 0.0)
    assert occ.level(TIGHT) == 7  # now more than 10 % met 7
    assert occ.size(TIGHT, 999) == pytest.approx(30.0)
    assert occ.reserve(TIGHT, 5, 1, 0.0) == 2 and occ.reserve(TIGHT, 9, 1, 0.0) == 0


def test_the_record_forgets_with_a_30_s_half_life_and_the_floor_returns() -> None:
    occ = Occupancy(quantile=0.99)
    for _ in range(8):
        occ.observe(TIGHT, 6, 30, 0.0)
    assert occ.samples(TIGHT, 30.0) == pytest.approx(4.0)
    for _ in range(1000):
        occ.observe(TIGHT, 1, 30, 300.0)  # ten half-lives later the old level is ~1/1000
    assert occ.level(TIGHT) == 1
    assert occ.samples(TIGHT, 300.0 + 30.0 * math.log2(1000 / MIN_SAMPLES) + 1) < MIN_SAMPLES
    assert occ.reserve(TIGHT, 1, 1, 600.0) == 1  # too little on record again: the floor
    occ.observe(TIGHT, 3, 30, 2000.0)  # past the renormalization point: still exact
    assert occ.level(TIGHT) in (1, 3) and occ.samples(TIGHT, 2000.0) >= 1.0


def seen(policy: PolyServe, held: int, n: int = 40) -> None:
    """The router has watched for 100 s, no bin short, and ``n`` t20 placements met ``held``."""
    occ = policy.occupancy
    assert occ is not None
    occ.short_at(TIGHT, -100.0, True)
    for _ in range(n):
        occ.observe(TIGHT, held, 60, 0.0)


@pytest.mark.parametrize(("level", "want"), [(7, "b"), (9, "a")])
def test_a_tighter_server_lends_only_what_its_tiers_arrivals_do_not_need(level: int, want: str) -> None:
    # a: t50 with 30 residents (41 ms with one more); b: t20 with 2 t20 residents (13 ms
    # with the t50 request). b's budget is 0.95 x 20 = 19 ms, 9 sequences: after the
    # request it must still hold (level - 2) t20 requests — 5 fit (18 ms), 7 do not (20 ms)
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 30, "b": 2}, step=STEEP)
    p = build("polyserve", placement="spread")
    seen(p, level)
    d = p.select(request(T50), f.snap())
    assert isinstance(d, Dispatch) and d.backends[0] == want, d
    if want == "b":
        assert d.backends[1] == "a"  # its own bin's server is the fallback


def test_no_lending_where_the_request_would_not_run_faster() -> None:
    # a: t50 with 2 residents (13 ms with one more) against b: t20 with 4 (15 ms)
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 2, "b": 4}, step=STEEP)
    p = build("polyserve", placement="spread")
    seen(p, 1)
    d = p.select(request(T50), f.snap())
    assert isinstance(d, Dispatch) and d.backends == ("a",), d


def test_no_lending_while_the_tighter_tier_waits_in_the_queue() -> None:
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 30, "b": 0}, step=STEEP)
    p = build("polyserve", placement="spread")
    seen(p, 1)
    snap = f.snap()
    assert p.select(request(T50), snap).backends[0] == "b"
    waiting = dataclasses.replace(snap, queued={"t20": 1})
    assert p.select(request(T50), waiting).backends[0] == "a"


def test_placing_its_own_tier_records_the_occupancy_met() -> None:
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 3, "b": 4}, step=STEEP)
    p = build("polyserve", placement="spread")
    for _ in range(int(MIN_SAMPLES) + 1):
        d = p.select(request(T20), f.snap())
        assert isinstance(d, Dispatch) and d.backends == ("b",)
    assert p.occupancy.level(TIGHT) == 5  # the 4 residents and itself
    p.select(request(T50), f.snap())  # a t50 request on its own server is not t20's occupancy
    assert p.occupancy.level(TIGHT) == 5 and p.occupancy.samples(TIGHT, 0.0) == int(MIN_SAMPLES) + 1


def test_a_bin_short_of_room_for_its_own_tier_lends_nothing_within_the_lent_life() -> None:
    # the t50 request (bound 50 tokens) would run at 13 ms on b: a life of 0.65 s
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 30, "b": 2}, step=STEEP)
    p = build("polyserve", placement="spread")
    seen(p, 1)
    assert p.occupancy is not None
    p.occupancy.short(TIGHT, f.clock.now())
    assert p.select(request(T50), f.snap()).backends[0] == "a"
    f.clock.advance(0.6)
    assert p.select(request(T50), f.snap()).backends[0] == "a"
    f.clock.advance(0.1)
    assert p.select(request(T50), f.snap()).backends[0] == "b"


def test_a_request_its_own_bin_cannot_place_marks_the_bin_short() -> None:
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 0, "b": 10}, step=STEEP)  # b: 21 ms with one more
    p = build("polyserve", placement="spread")
    assert p.occupancy is not None and p.occupancy.short_at(TIGHT, 0.0, True) == 0.0  # first asked: now
    f.clock.advance(5.0)
    assert not isinstance(p.select(request(T20, arrival=5.0), f.snap()), Dispatch)  # 21 ms > 20 ms
    assert p.occupancy.short_at(TIGHT, f.clock.now(), True) == f.clock.now()


def test_a_router_that_has_not_watched_for_the_lent_life_lends_nothing() -> None:
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 30, "b": 0}, step=STEEP)
    p = build("polyserve", placement="spread")
    assert p.select(request(T50), f.snap()).backends[0] == "a"  # first look at t = 0
    f.clock.advance(0.5)  # the request's life on b: 50 tokens x 11 ms = 0.55 s
    assert p.select(request(T50, arrival=0.5), f.snap()).backends[0] == "a"
    f.clock.advance(0.1)
    assert p.select(request(T50, arrival=0.6), f.snap()).backends[0] == "b"


def test_only_spread_lends() -> None:
    assert build("polyserve", placement="pack").occupancy is None
    assert build("polyserve", placement="spread", lend_room=False).occupancy is None
    assert build("polyserve", placement="spread").occupancy is not None


def test_a_tighter_bins_shortage_counts_only_where_it_may_borrow() -> None:
    occ = Occupancy()
    loose = Tightness(PACED, 0.050)
    assert occ.short_at(loose, 0.0, True) == 0.0  # watching from t = 0
    occ.short(TIGHT, 5.0)  # the t20 bin found no room at t = 5
    assert occ.short_at(loose, 6.0, borrowing=True) == 5.0  # it may borrow a t50 server
    assert occ.short_at(loose, 6.0, borrowing=False) == 0.0  # overflow is upward only
    occ.short(Tightness(PACED, 0.100), 7.0)
    assert occ.short_at(loose, 8.0, borrowing=False) == 7.0  # t100 overflows into t50
