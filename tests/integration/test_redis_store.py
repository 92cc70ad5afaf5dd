"""RedisStore and SyncLoop against a real ``redis-server`` (tests/redisserver.py): rows
exchanged between stores, the TTL, the leader lease, and what a dead or hung store does
to a replica's sync loop (it keeps running on its own view and recovers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from slorouter.clock import RealClock
from slorouter.models.static import StaticLatency, StaticLengths
from slorouter.proxy.redisstore import RedisStore
from slorouter.proxy.syncloop import StoreError, SyncLoop
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.sync import LoadSync, Row
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Slo, SloClass, Status, Tier
from tests.redisserver import RedisServer

pytestmark = pytest.mark.timeout(60)

TTL = 0.3  # s: short, so expiry and takeover are quick to see
TICK = 0.05
FAST = Tier("fast", Slo(SloClass.LATENCY, 1.0, 0.05), rank=0)
BS = BackendSet([Backend("b0", "http://b0", tier="fast")], (FAST,))


def row(holder: str, running: int = 0) -> Row:
    if not running:
        return Row(holder, time.time(), 1.0)
    counters = np.array([[running, 10 * running, 0, 20 * running, 0, 0]], dtype=np.int64)
    return Row(holder, time.time(), 1.0, ids=("b0",), counters=counters)


async def until(cond: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``cond`` until true; the seconds it took. Fails after ``within`` seconds."""
    t0 = time.monotonic()
    while not await cond():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_two_stores_exchange_rows_and_prefixes_keep_routers_apart(redis_srv: RedisServer) -> None:
    a = RedisStore(redis_srv.url, prefix="r1", ttl_s=5)
    b = RedisStore(redis_srv.url, prefix="r1", ttl_s=5)
    other = RedisStore(redis_srv.url, prefix="r2", ttl_s=5)
    try:
        assert set(await a.exchange(row("a", 2))) == {"a"}
        got = await b.exchange(row("b", 3))
        assert set(got) == {"a", "b"}
        assert got["a"].loads["b0"][0] == 2 and got["b"].loads["b0"][0] == 3
        # a's next exchange replaces its row and sees b's
        got = await a.exchange(row("a", 1))
        assert got["a"].loads["b0"][0] == 1 and got["b"].loads["b0"][0] == 3
        assert set(await other.exchange(row("x"))) == {"x"}  # another logical router
        # a clean stop withdraws the row at once
        await b.close()
        assert set(await a.exchange(row("a", 1))) == {"a"}
    finally:
        await a.close()
        await other.close()


async def test_a_row_not_refreshed_vanishes_after_the_ttl(redis_srv: RedisServer) -> None:
    a = RedisStore(redis_srv.url, prefix="p", ttl_s=TTL)
    b = RedisStore(redis_srv.url, prefix="p", ttl_s=TTL)
    try:
        await b.exchange(row("b", 1))
        written = time.monotonic()

        async def b_gone() -> bool:
            return "b" not in await a.exchange(row("a"))

        took = await until(b_gone, TTL + 1.0, "b's row expires")
        gone_after = time.monotonic() - written
        assert TTL - 0.05 <= gone_after <= TTL + 0.1, gone_after
        assert took > 0  # it was there at first
    finally:
        await a.close()
        await b.close()


async def test_the_lease_has_one_holder_and_passes_on_when_it_is_not_renewed(redis_srv: RedisServer) -> None:
    stores = {n: RedisStore(redis_srv.url, prefix="l", ttl_s=TTL) for n in "abc"}
    try:
        leaders = set()
        for _ in range(5):  # contend concurrently, renewing: always exactly one, the same one
            got = await asyncio.gather(*(s.lease(n, TTL) for n, s in stores.items()))
            assert sum(got) == 1
            leaders |= {n for n, ok in zip(stores, got, strict=True) if ok}
            renewed = time.monotonic()
            await asyncio.sleep(TTL / 4)
        assert len(leaders) == 1
        leader = leaders.pop()
        rest = {n: s for n, s in stores.items() if n != leader}

        async def taken() -> bool:  # the leader stops renewing; the others keep asking
            got = await asyncio.gather(*(s.lease(n, TTL) for n, s in rest.items()))
            assert sum(got) <= 1
            return any(got)

        await until(taken, TTL + 1.0, "a follower takes the lease")
        after = time.monotonic() - renewed
        assert TTL - 0.05 <= after <= TTL + 0.1, after
        assert not await stores[leader].lease(leader, TTL)  # the old leader cannot take it back
        # a clean stop gives the lease up at once
        new = [n for n, s in rest.items() if await s.lease(n, TTL)]
        assert len(new) == 1
        await stores[new[0]].exchange(row(new[0]))
        await stores.pop(new[0]).close()
        assert await stores[leader].lease(leader, TTL)
    finally:
        for s in stores.values():
            await s.close()


async def test_a_dead_or_hung_store_fails_fast_and_the_store_recovers(redis_srv: RedisServer) -> None:
    s = RedisStore(redis_srv.url, prefix="d", ttl_s=TTL)
    try:
        await s.exchange(row("a", 1))
        redis_srv.kill()
        for _ in range(3):  # refused: at once, each time (no retries, no backoff)
            t0 = time.monotonic()
            with pytest.raises(StoreError):
                await s.exchange(row("a", 1))
            assert time.monotonic() - t0 < 0.1
        with pytest.raises(StoreError):
            await s.lease("a", TTL)
        redis_srv.start()  # same port, empty (no persistence), scripts gone: reconnects, reloads
        assert set(await s.exchange(row("a", 1))) == {"a"}
        assert await s.lease("a", TTL)
        redis_srv.freeze()  # hung: connections open, no answers
        t0 = time.monotonic()
        with pytest.raises(StoreError):
            await s.exchange(row("a", 2))
        assert time.monotonic() - t0 < s.timeout_s + 0.1 < TTL
        redis_srv.thaw()
        got = await s.exchange(row("a", 3))  # a fresh connection: no stale answer read
        assert got["a"].loads["b0"][0] == 3
    finally:
        await s.close()


def replica(name: str, url: str) -> tuple[Tracker, SyncLoop]:
    t = Tracker(RealClock(), BS, Health(["b0"]), StaticLatency(), StaticLengths(20))
    sync = LoadSync(t, name, quota=False, wall=time.time)
    return t, SyncLoop(sync, RedisStore(url, prefix="s", ttl_s=TTL), tick_s=TICK, ttl_s=TTL)


async def test_sync_loop_routes_on_its_own_view_while_the_store_is_gone_and_recovers(
    redis_srv: RedisServer,
) -> None:
    (ta, la), (tb, lb) = replica("a", redis_srv.url), replica("b", redis_srv.url)
    for rid in range(3):  # b holds 3 requests on b0, a holds 1
        tb.on_arrival(RequestInfo(rid, FAST, tb.clock.now(), 10, None, 20))
        tb.on_dispatch(rid, "b0")
    ta.on_arrival(RequestInfo(9, FAST, ta.clock.now(), 10, None, 20))
    ta.on_dispatch(9, "b0")
    la.start()
    lb.start()
    try:

        async def both_see_four() -> bool:
            return ta.loads["b0"].running == 4 == tb.loads["b0"].running

        await until(both_see_four, 2 * TICK + 0.5, "each sees own + the other's")
        assert la.up and la.peers == 1 and la.leader != lb.leader

        redis_srv.kill()
        killed = time.monotonic()
        ticks = la.ticks

        async def noticed() -> bool:
            return not la.up and not lb.up

        await until(noticed, TICK + 0.2, "the outage is noticed at the next tick")
        # the others' rows are kept while younger than the TTL, then a routes on its own
        await until(lambda: _is(ta.loads["b0"].running == 1), TTL + TICK + 0.2, "a's own view")
        assert time.monotonic() - killed >= TTL - TICK - 0.05
        assert la.peers == 0
        # the leader keeps its duties until its lease (renewed a tick before at most) expires
        await until(lambda: _is(not la.leader and not lb.leader), TICK + 0.2, "no leader")
        assert time.monotonic() - killed <= TTL + 2 * TICK + 0.2
        # the loop kept ticking all along (one refused connection per tick, no stall)
        await until(lambda: _is(la.ticks >= ticks + 5), 10 * TICK + 0.5, "the loop keeps ticking")
        assert la.failures >= 5

        redis_srv.start()
        await until(lambda: _is(la.up and lb.up), TICK + 0.5, "the store is back")
        await until(both_see_four, 2 * TICK + 0.5, "the shared view is back")
        await until(lambda: _is(la.leader != lb.leader), 2 * TICK + 0.5, "one leader again")
    finally:
        await la.stop()
        await lb.stop()


async def test_a_hung_store_never_stalls_a_tick_past_the_ttl(redis_srv: RedisServer) -> None:
    (ta, la), (tb, lb) = replica("a", redis_srv.url), replica("b", redis_srv.url)
    tb.on_arrival(RequestInfo(1, FAST, tb.clock.now(), 10, None, 20))
    tb.on_dispatch(1, "b0")
    la.start()
    lb.start()
    try:
        await until(lambda: _is(ta.loads["b0"].running == 1), 2 * TICK + 0.5, "a sees b's request")
        await until(lambda: _is(la.leader or lb.leader), 2 * TICK + 0.5, "a leader")
        redis_srv.freeze()
        frozen = time.monotonic()
        ticks = la.ticks
        await until(lambda: _is(not la.up), la.timeout_s + TICK + 0.2, "a timed-out tick")
        # ticks go on at the store timeout's pace (< TTL), and b's share leaves a's view
        await until(lambda: _is(ta.loads["b0"].running == 0), TTL + la.timeout_s + 0.3, "a's own view")
        assert la.ticks >= ticks + 2
        # the leader keeps its duties until its lease would have expired, not after
        await until(lambda: _is(not la.leader and not lb.leader), TTL + la.timeout_s + 0.3, "no leader")
        assert time.monotonic() - frozen <= TTL + la.timeout_s + 0.3
        redis_srv.thaw()
        await until(lambda: _is(la.up and ta.loads["b0"].running == 1), TTL + 0.5, "back to the shared view")
    finally:
        await la.stop()
        await lb.stop()


async def _is(v: bool) -> bool:
    return v


async def test_stopping_the_loop_in_the_middle_of_an_exchange_never_hangs(redis_srv: RedisServer) -> None:
    """On Python 3.11 the redis client's ``asyncio.wait_for`` can swallow a cancellation
    that lands as its I/O completes: a loop stopped by cancelling it could run on forever
    (and hang the router's shutdown). Stop at many points of the exchange."""
    for i in range(40):
        _, loop = replica("a", redis_srv.url)
        loop.tick_s = 0.0  # exchange back to back: a stop lands in the I/O most of the time
        loop.start()
        await asyncio.sleep(0.0003 * i)
        await asyncio.wait_for(loop.stop(), loop.timeout_s + 1.0)


async def test_an_own_placement_is_exchanged_event_driven_well_before_the_tick(
    redis_srv: RedisServer,
) -> None:
    """With ``event_s`` a replica exchanges soon after it placed a request — publishing it
    and reading the others' — instead of waiting for its tick (here 3 s)."""
    long_tick, event = 3.0, 0.02

    def busy(name: str) -> tuple[Tracker, SyncLoop]:
        t = Tracker(RealClock(), BS, Health(["b0"]), StaticLatency(), StaticLengths(20))
        sync = LoadSync(t, name, quota=False, wall=time.time)
        store = RedisStore(redis_srv.url, prefix="ev", ttl_s=10.0)
        return t, SyncLoop(sync, store, tick_s=long_tick, ttl_s=10.0, event_s=event)

    (ta, la), (tb, lb) = busy("a"), busy("b")
    la.start()
    lb.start()
    try:
        await until(lambda: _is(la.ticks >= 1 and lb.ticks >= 1), 1.0, "the first exchanges")
        t0 = time.monotonic()
        tb.on_arrival(RequestInfo(1, FAST, tb.clock.now(), 10, None, 20))
        tb.on_dispatch(1, "b0")
        await until(lambda: _is(lb.ticks >= 2), 1.0, "b exchanges after its placement")
        ta.on_arrival(RequestInfo(2, FAST, ta.clock.now(), 10, None, 20))
        ta.on_dispatch(2, "b0")  # a's own exchange reads b's row
        await until(lambda: _is(ta.loads["b0"].running == 2), 1.0, "a sees b's request")
        assert time.monotonic() - t0 < long_tick / 2
        # b's next exchange (its own row unchanged since) waits for the tick; a departure
        # of its own brings it forward again
        ticks = lb.ticks
        tb.on_finish(1, Status.OK)
        await until(lambda: _is(lb.ticks > ticks), 1.0, "b publishes its departure")
        ta.on_finish(2, Status.OK)
        await until(lambda: _is(ta.loads["b0"].running == 0), 1.0, "a sees both gone")
        assert time.monotonic() - t0 < long_tick
    finally:
        await la.stop()
        await lb.stop()
