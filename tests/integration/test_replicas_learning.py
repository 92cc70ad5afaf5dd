"""Replicas over a real Redis learn one latency model: each publishes what its model learns
from with its row, and every replica's model learns from the others' traffic too
(slorouter.state.learning, through slorouter.proxy.redisstore and the sync loop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from slorouter.clock import ManualClock
from slorouter.models.latency import LatencySettings, OnlineLatency
from slorouter.models.static import EngineLimits, LinearStep, StaticLengths
from slorouter.proxy.redisstore import RedisStore
from slorouter.proxy.syncloop import SyncLoop
from slorouter.simengine.server import serve_engines
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.learning import LearningShare
from slorouter.state.sync import LoadSync
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Slo, SloClass, Status, Tier
from tests.redisserver import RedisServer
from tests.replicakit import metric, replica_config, sync, tracker
from tests.replicakit import until as until_async
from tests.routerkit import run_router

pytestmark = pytest.mark.timeout(60)

TTL, TICK, EVENT = 0.5, 0.05, 0.01
FAST = Tier("fast", Slo(SloClass.LATENCY, 1.0, 0.05), rank=0)
BS = BackendSet([Backend("b0", "http://b0", tier="fast"), Backend("b1", "http://b1", tier="fast")], (FAST,))
PRIOR = LinearStep(c0_s=0.010, c_batch_s=1e-4, c_kv_s=5e-8, c_prefill_s=3e-5)
LIMITS = EngineLimits(max_num_seqs=256, kv_capacity_tokens=400_000, max_batched_tokens=2048)


def replica(name: str, url: str, clock: ManualClock) -> tuple[Tracker, OnlineLatency, SyncLoop]:
    """A router process's parts as app/build.py wires them: its tracker feeds its latency
    model, whose observations ride on the row it exchanges through Redis."""
    model = OnlineLatency(clock, PRIOR, LIMITS, settings=LatencySettings(), prefill_ratio=1.0)
    t = Tracker(clock, BS, Health(["b0", "b1"]), model, StaticLengths(64))
    t.add_listener(model.observe_outcome)
    share = LearningShare(model, time.time, keep_s=TTL / 2)
    sync = LoadSync(t, name, quota=False, wall=time.time, learning=share)
    store = RedisStore(url, prefix="learn", ttl_s=TTL)
    return t, model, SyncLoop(sync, store, tick_s=TICK, ttl_s=TTL, event_s=EVENT)


def serve(t: Tracker, clock: ManualClock, rids: range, tokens: int) -> None:
    """Requests streamed on b0/b1 (the clock paced 12 ms a token), all finishing at once."""
    for rid in rids:
        t.on_arrival(RequestInfo(rid, FAST, clock.now(), 200 + 10 * rid, None, tokens))
        t.on_dispatch(rid, f"b{rid % 2}")
    for _ in range(tokens):
        clock.advance(0.012)
        for rid in rids:
            t.on_tokens(rid, 1)
    for rid in rids:
        t.on_usage(rid, 200 + 10 * rid, tokens)
        t.on_finish(rid, Status.OK)


def learned(m: OnlineLatency, now: float) -> dict[str, Any]:
    st = m.to_state(now)
    for b in st["backends"].values():
        del b["windows"]  # each process's pool of responses too short for a window
    return st


async def until(cond: Callable[[], bool], within: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)


async def test_a_replica_learns_its_latency_model_from_another_replicas_traffic(
    redis_srv: RedisServer,
) -> None:
    clock = ManualClock(1000.0)
    (ta, ma, la), (tb, mb, lb) = replica("a", redis_srv.url, clock), replica("b", redis_srv.url, clock)
    assert la.sync.learning is not None and lb.sync.learning is not None
    la.start()
    lb.start()
    try:
        # a serves 6 streams of 300 tokens (windows of their own) while b serves nothing
        serve(ta, clock, range(6), 300)
        assert ma.describe("b0")["batches"] == 3 and mb.observations("b0") == 0
        await until(lambda: lb.sync.learning.received == 6, 2.0, "b learns a's six responses")
        # b's model is the one a learned from its own traffic: fit, digests, first tokens, ρ
        now = clock.now()
        assert learned(mb, now) == learned(ma, now)
        for b in ("b0", "b1"):
            assert mb.step_time(b, 6, 6 * 500) == ma.step_time(b, 6, 6 * 500) != PRIOR.at(6, 3000)
            assert mb.describe(b) == ma.describe(b)
        # and the other way: b's traffic (short responses, pooled) reaches a
        serve(tb, clock, range(10, 18), 40)
        await until(lambda: la.sync.learning.received == 8, 2.0, "a learns b's eight responses")
        assert ma.describe("b0")["batches"] == mb.describe("b0")["batches"] == 3 + 4
        assert ma.observations("b1") == mb.observations("b1")
        assert la.sync.learning.missed == lb.sync.learning.missed == 0
    finally:
        await la.stop()
        await lb.stop()


async def test_router_replicas_learn_from_each_others_streams(redis_srv: RedisServer) -> None:
    """Two ``build_app`` replicas over a real Redis, simulated engines, the official client:
    streams through replica a only; replica b's latency model learns from every one of
    them, and both replicas' /metrics say so."""
    async with serve_engines(2, profile="cpu-tiny") as fleet:
        cfg = replica_config(fleet.urls, redis_srv.url, policy="least-request")
        async with run_router(cfg) as a, run_router(cfg) as b:
            ma, mb = tracker(a).latency, tracker(b).latency
            assert isinstance(ma, OnlineLatency) and isinstance(mb, OnlineLatency)
            c = openai.AsyncOpenAI(base_url=a.url + "/v1", api_key="none", max_retries=0, timeout=60)
            try:

                async def one() -> None:
                    stream = await c.completions.create(
                        model="sim-llama",
                        prompt="hello",
                        max_tokens=60,
                        stream=True,
                        extra_body={"ignore_eos": True},
                    )
                    async for _ in stream:
                        pass

                await asyncio.gather(*(one() for _ in range(6)))
            finally:
                await c.close()
            la, lb = sync(a).learning, sync(b).learning
            assert la is not None and lb is not None
            assert la.sent == 6  # every response a's model learned from, published
            await until_async(lambda: lb.received == 6, 3.0, "b learns a's six responses")
            ids = [x.id for x in tracker(a).backends.backends]
            assert sum(mb.describe(x)["batches"] for x in ids) == 6
            for x in ids:
                assert mb.observations(x) == ma.observations(x)
                assert mb.describe(x)["ttft_extra"]["requests"] == pytest.approx(
                    ma.describe(x)["ttft_extra"]["requests"], rel=0.01
                )
            assert await metric(a.url, "slorouter_sync_observations_total", way="published") == 6
            assert await metric(b.url, "slorouter_sync_observations_total", way="learned") == 6
            assert await metric(b.url, "slorouter_sync_observations_total", way="missed") == 0
