"""Autoscaling with router replicas sharing their state through a real ``redis-server``.

Real processes, real sockets: two ``slorouter serve`` replicas (``state.sync.kind:
redis``, autoscale on in webhook mode), simulated engines, the reference receiver
(:class:`~slorouter.tools.scaler_sim.ScalerSim`, given both replicas: it registers at the
first that answers) and a second receiver that records the raw webhook requests; the
load is the real ``openai`` client, spread over both replicas.

* Only the leader (the replica holding the Redis lease) decides: every decision sent
  carries its id prefix, none is sent twice, the follower has none of its own. A load
  step offered through both replicas makes the leader ask for a ``fast`` server; the
  receiver starts it and registers it; both replicas place requests on it (the
  registration travels through the store). When the load is gone a server drains and is
  released (the receiver stops it), out of both replicas' sets.
* The leader is killed (``SIGKILL``) while streams run through both replicas: the other
  takes the lease within the TTL, every stream through it completes, and its scaler
  carries on from the published state — the exported counters continue, and a later load
  step is acted on by the new leader, with decision ids of its own.

Engines: ``cpu-tiny`` (under the fast tier's 50 ms TPOT a server holds about 15 streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from slorouter.actuation.webhook import DECISION_HEADER, SIGNATURE_HEADER, verify
from slorouter.engine.profiles import BUILTIN_PROFILES
from slorouter.simengine.server import serve_engines
from slorouter.tools.scaler_sim import ScalerSim
from tests.integration.test_autoscale_live import (
    ADMIN,
    ADMIN_ENV,
    SECRET,
    SECRET_ENV,
    TIERS,
    autoscale,
    stream,
)
from tests.integration.test_webhook_sender import Receiver, receiver
from tests.promtext import values
from tests.redisserver import RedisServer, free_port
from tests.replicakit import Subprocess, scrape, serve_subprocess, sync_section, until
from tests.routerkit import raw_router_config

HOOKS = autoscale([])["webhook"]
TTL_MS = 1500.0  # the lease: long enough that a busy host's stalls do not move it


@dataclass
class Rig:
    """Two replicas (``a`` started first: the leader), the receiver and the recorder."""

    a: Subprocess
    b: Subprocess
    sim: ScalerSim
    rec: Receiver


async def admin(url: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.get(url + path, headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def fast_servers(url: str) -> dict[str, int]:
    """The replica's fast-tier backends -> requests it placed there itself, in flight."""
    got = await admin(url, "/admin/backends")
    return {b["id"]: b["inflight"]["own_requests"] for b in got["backends"] if b["tier"] == "fast"}


async def leads(url: str) -> bool:
    got = values(await scrape(url), "slorouter_leader")
    return list(got.values()) == [1.0]


def counter(text: str, name: str, **labels: str) -> float:
    want = frozenset(labels.items())
    return next((v for k, v in values(text, name).items() if want <= k), 0.0)


def prefix(decision_id: str) -> str:
    return decision_id.rsplit("-", 1)[0]


@contextlib.asynccontextmanager
async def rig(
    redis: RedisServer, tmp: Path, monkeypatch: pytest.MonkeyPatch, *, refuse: bool = False
) -> AsyncIterator[Rig]:
    """``refuse``: the recorder answers 503 until the test clears ``rec.answers`` (the
    replicas retry it for minutes: every decision stays undelivered there meanwhile)."""
    monkeypatch.setenv(ADMIN_ENV, ADMIN)  # the replicas inherit the environment
    monkeypatch.setenv(SECRET_ENV, SECRET)
    prof = tmp / "cpu-tiny.json"
    BUILTIN_PROFILES["cpu-tiny"].save(prof)
    port_a, port_b = free_port(), free_port()
    urls = [f"http://127.0.0.1:{p}" for p in (port_a, port_b)]
    async with (
        serve_engines(1, profile="cpu-tiny") as fleet,
        receiver([503] * 100_000 if refuse else None) as rec,
    ):
        # registrations go to the first replica that answers (b, once it is up; a after b)
        sim = ScalerSim(urls[1], ADMIN, SECRET.encode(), profile="cpu-tiny", fallback_routers=(urls[0],))
        hook = await sim.start()
        try:
            cfg = raw_router_config(
                fleet.urls,
                policy="polyserve",
                tiers=TIERS,
                backend_tiers=["batch"],  # the fast tier starts with no server: its floor asks for one
                extra={
                    "routing": {"default_tier": "fast"},
                    "admin": {"token_env": ADMIN_ENV},
                    "models": {"profile": str(prof)},
                    "autoscale": autoscale([hook, rec.url])
                    | {"webhook": HOOKS | {"urls": [hook, rec.url], "max_attempts": 10_000}},
                    "state": {"sync": sync_section(redis.url, ttl_ms=TTL_MS)},
                },
            )
            async with serve_subprocess(cfg, tmp, port_a) as a:
                await until(lambda: leads(a.url), 20, "replica a to take the lease")
                async with serve_subprocess(cfg, tmp, port_b) as b:

                    async def floor_everywhere() -> bool:
                        return [len(await fast_servers(u)) for u in (a.url, b.url)] == [1, 1]

                    await until(floor_everywhere, 20, "the fast tier's floor server in both replicas")
                    yield Rig(a, b, sim, rec)
        finally:
            await sim.stop()


def offer(
    urls: list[str], n: int, tokens: int, rate: float | None = None, first: int = 0
) -> asyncio.Task[list[float | BaseException]]:
    """``n`` streamed fast-tier requests, the ``i``-th through ``urls[i % len(urls)]``: all
    at once, or paced at ``rate`` per second (a load step). Each one's time to first
    token, or what it raised."""

    async def run() -> list[float | BaseException]:
        clients = [openai.AsyncOpenAI(base_url=u + "/v1", api_key="EMPTY", max_retries=0) for u in urls]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = []
        try:
            for i in range(n):
                if rate is not None:
                    await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))  # the arrival schedule
                tasks.append(asyncio.create_task(stream(clients[i % len(urls)], first + i, tokens)))
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for c in clients:
                await c.close()

    return asyncio.create_task(run())


async def served(*offers: asyncio.Task[list[float | BaseException]]) -> list[float | BaseException]:
    return [x for got in await asyncio.wait_for(asyncio.gather(*offers), 30) for x in got]


async def placed_by_both(r: Rig, old: set[str], within: float) -> str:
    """A fast backend not in ``old`` on which both replicas have requests in flight."""
    seen: dict[str, set[str]] = {}

    async def both() -> bool:
        for name, url in (("a", r.a.url), ("b", r.b.url)):
            for bid, n in (await fast_servers(url)).items():
                if bid not in old and n > 0:
                    seen.setdefault(bid, set()).add(name)
        return any(len(v) == 2 for v in seen.values())

    await until(both, within, "both replicas to place requests on a new fast server")
    return next(bid for bid, v in seen.items() if len(v) == 2)


def check_bodies(rec: Receiver, sim: ScalerSim) -> list[dict[str, Any]]:
    """Every webhook body as sent: signed, one of each id; the receiver acted on each once."""
    bodies = []
    for headers, raw in rec.got:
        assert verify(SECRET.encode(), raw, headers[SIGNATURE_HEADER])
        body = orjson.loads(raw)
        assert headers[DECISION_HEADER] == body["decision_id"]
        bodies.append(body)
    ids = [b["decision_id"] for b in bodies]
    assert len(ids) == len(set(ids)), ids  # no decision twice, from any replica
    assert sim.duplicates == 0 and sim.bad_signatures == 0 and not sim.errors, sim.errors
    return bodies


@pytest.mark.timeout(60)
async def test_only_the_leader_scales_a_step_offered_through_both_replicas(
    redis_srv: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(redis_srv, tmp_path, monkeypatch) as r:
        first = set(await fast_servers(r.a.url))
        asked_before = len(r.sim.decisions)

        # the load step: 16 req/s for 3 s, alternately through each replica (about 30 in
        # flight: two servers' worth)
        step = offer([r.a.url, r.b.url], 48, 40, rate=16.0)
        new = await placed_by_both(r, first, 30)
        done = await served(step)
        assert len(done) == 48 and all(isinstance(t, float) for t in done), done  # every token
        assert new in r.sim.started and new.startswith("sim-fast-")  # the receiver's server
        grown = [d for d in r.sim.decisions[asked_before:] if d["add"] > 0]
        assert grown and {d["tier"] for d in grown} == {"fast"}, r.sim.decisions

        # the load is gone: a server drains and is released, out of both replicas' sets; the
        # decision giving it back is sent once both have adopted the removal (the receiver's
        # DELETE, at b, finds it removed by the scaler, not a fresh admin removal)
        async def back_to_one() -> bool:
            one = [len(await fast_servers(u)) for u in (r.a.url, r.b.url)] == [1, 1]
            return one and len(r.sim.engines) == 1 and not r.sim.acting

        await until(back_to_one, 20, "the extra fast servers released everywhere, their engines stopped")
        released = [x for d in r.sim.decisions if d["tier"] == "fast" for x in d["remove"]]
        assert released and set(released) <= set(r.sim.started)
        for url in (r.a.url, r.b.url):
            gone = {x["id"]: x for x in (await admin(url, "/admin/backends"))["removed"]}
            assert set(released) <= set(gone), (url, gone)
            assert all(gone[x]["by"] == "scaler" for x in released), (url, gone)

        # one scaler: the leader's; every decision sent is its, once
        lead, follower = await admin(r.a.url, "/admin/autoscale"), await admin(r.b.url, "/admin/autoscale")
        assert lead["leader"] is True and follower["leader"] is False and follower["decisions"] == []
        assert follower["tiers"]["fast"]["desired"] == lead["tiers"]["fast"]["desired"]  # the leader's state
        await until(lambda: len(r.rec.got) >= len(r.sim.decisions), 5, "every decision at the recorder")
        bodies = check_bodies(r.rec, r.sim)
        assert bodies == r.sim.decisions
        assert {prefix(b["decision_id"]) for b in bodies} == {prefix(lead["decisions"][0]["decision_id"])}
        # every server asked for was started once: the adds sum to what the receiver ran
        assert sum(b["add"] for b in bodies if b["tier"] == "fast") == len(r.sim.started)


@pytest.mark.timeout(60)
async def test_the_leader_killed_mid_run_the_other_replica_scales_on(
    redis_srv: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the recorder refuses (503) until after the kill: a delivers none of its decisions
    # there, so any that reaches it later was sent again by b, from a's published state
    async with rig(redis_srv, tmp_path, monkeypatch, refuse=True) as r:
        old = await admin(r.a.url, "/admin/autoscale")
        old_prefix = prefix(old["decisions"][0]["decision_id"])
        (floor_server,) = await fast_servers(r.a.url)

        # streams through both replicas; the leader dies under them
        via_a, via_b = offer([r.a.url], 4, 80), offer([r.b.url], 4, 80, first=4)

        async def both_streaming() -> bool:
            return min([(await fast_servers(u)).get(floor_server, 0) for u in (r.a.url, r.b.url)]) > 0

        await until(both_streaming, 20, "streams in flight through both replicas")
        before, scraped = await scrape(r.a.url), time.time()

        async def b_has_newer_state() -> bool:  # a published its counts of after the scrape
            return float((await admin(r.b.url, "/admin/autoscale"))["leader_state_at"] or 0) > scraped

        await until(b_has_newer_state, 5, "replica b to hold a's scaler state of after the scrape")
        r.a.kill()
        killed, killed_wall = time.monotonic(), time.time()
        await until(lambda: leads(r.b.url), TTL_MS / 1000 + 5, "replica b to take the lease")
        took = time.monotonic() - killed
        # the lease expires TTL after a's last renewal (< 50 ms before the kill); b takes it at
        # its next exchange (50 ms); the rest is slack for a busy host (measured 1.53-1.80 s)
        assert took < TTL_MS / 1000 + 1.0, took
        mark = len(r.rec.got)
        r.rec.answers.clear()  # the recorder accepts from here on (each request once: no delay)

        # nothing through the surviving replica fails or hangs; a's own streams broke off
        got_b = await served(via_b)
        assert all(isinstance(t, float) for t in got_b), got_b
        got_a = await served(via_a)
        assert all(isinstance(t, BaseException) for t in got_a), got_a

        # b's scaler resumed a's: it says so, and the exported counters carry on
        async def b_scaling() -> Any:
            got = await admin(r.b.url, "/admin/autoscale")
            return got if got.get("leader") and got.get("takeovers") == 1 else None

        await until(b_scaling, 10, "replica b's scaler to run")
        after = await scrape(r.b.url)
        for name, labels in (
            ("slorouter_autoscale_decisions_total", {"tier": "fast", "kind": "out"}),
            ("slorouter_autoscale_webhook_total", {"result": "delivered"}),
        ):
            was = counter(before, name, **labels)
            assert was > 0 and counter(after, name, **labels) >= was, (name, was)

        # back to the floor (whatever the streams made a ask for, b gives back), then a new
        # load step through b alone: the new leader asks, the receiver registers at b
        async def floor() -> bool:
            return len(await fast_servers(r.b.url)) == 1 and len(r.sim.engines) == 1 and not r.sim.acting

        await until(floor, 20, "the fast tier back to its floor")
        asked_before = len(r.sim.decisions)
        present = set(await fast_servers(r.b.url))
        step = offer([r.b.url], 48, 40, rate=16.0, first=100)

        async def b_places_on_new() -> bool:
            return any(n > 0 and bid not in present for bid, n in (await fast_servers(r.b.url)).items())

        await until(b_places_on_new, 30, "replica b to place requests on a new fast server")
        done = await served(step)
        assert all(isinstance(t, float) for t in done), done
        grown = [d for d in r.sim.decisions[asked_before:] if d["add"] > 0]
        assert grown and {d["tier"] for d in grown} == {"fast"}, r.sim.decisions

        # the decisions: a's until it died, b's after, never the same id; a's, which the
        # recorder had refused, were sent to it again by b
        new = await admin(r.b.url, "/admin/autoscale")
        new_prefix = prefix(new["decisions"][-1]["decision_id"])
        assert new_prefix != old_prefix
        made = {d["decision_id"] for d in r.sim.decisions}  # every decision, as the receiver took it

        def accepted() -> list[dict[str, Any]]:
            return [orjson.loads(raw) for _, raw in r.rec.got[mark:]]

        await until(
            lambda: made <= {b["decision_id"] for b in accepted()}, 5, "every decision at the recorder"
        )
        for headers, raw in r.rec.got[mark:]:
            assert verify(SECRET.encode(), raw, headers[SIGNATURE_HEADER])
        ids = [b["decision_id"] for b in accepted()]
        assert len(ids) == len(set(ids)), ids  # each accepted once
        by = {prefix(i) for i in ids}
        assert by == {old_prefix, new_prefix}, by
        bodies = accepted()
        assert all(b["at"] <= killed_wall for b in bodies if prefix(b["decision_id"]) == old_prefix)
        assert all(b["at"] > killed_wall for b in bodies if prefix(b["decision_id"]) == new_prefix)
        assert all(prefix(d["decision_id"]) == new_prefix for d in grown)
        # the receiver had a's decisions from a (all but any a died before sending): b's
        # copies were dropped there by id
        assert 0 < r.sim.duplicates <= len([i for i in ids if prefix(i) == old_prefix])
        assert r.sim.bad_signatures == 0 and not r.sim.errors, r.sim.errors
