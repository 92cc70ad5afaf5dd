"""No request hangs and every request is finalized once: engines that stall before or
after the first byte, the TTFT budget of failover, clients that leave, and a router
that shuts down with streams in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from slorouter.simengine.server import serve_engines
from slorouter.values import Outcome, Status
from tests.faults.kit import hang_server
from tests.faults.test_faults import poll
from tests.routerkit import router_config, run_router
from tests.servekit import serve_app

QUIET_HEALTH = {"interval_s": 60.0, "failures": 100}  # no ejection during these tests
CHAT = {"model": "sim-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@asynccontextmanager
async def stall_server() -> AsyncIterator[str]:
    """Answers a stream with its headers and one event, then goes silent forever."""

    async def gen(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
        await asyncio.Event().wait()
        return resp

    app = web.Application()
    app.router.add_post("/{tail:.*}", gen)
    async with serve_app(app, handler_cancellation=True) as base:
        yield base


async def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.post(url, json=body, headers=headers) as r,
    ):
        return r.status, await r.read()


async def test_stall_after_first_byte_ends_with_an_sse_error_event() -> None:
    async with stall_server() as url:
        tiers = [
            {"name": "chat", "class": "latency", "ttft_ms": 2000, "tpot_ms": 100, "timeouts": {"idle_s": 0.3}}
        ]
        cfg = router_config(  # the tier's idle_s overrides the top-level one
            [url],
            tiers=tiers,
            extra={"health": QUIET_HEALTH, "timeouts": {"first_byte_s": 2.0, "idle_s": 30}},
        )
        async with run_router(cfg) as router:
            outs: list[Outcome] = []
            router.services.tracker.add_listener(outs.append)
            t0 = time.monotonic()
            status, body = await post(router.url + "/v1/chat/completions", {**CHAT, "stream": True})
            took = time.monotonic() - t0
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0].startswith(b'data: {"choices"')
    err = orjson.loads(events[1].removeprefix(b"data: "))["error"]
    assert "no data for 0.3 s" in err["message"] and err["code"] == "upstream_error"
    assert events[2] == b"data: [DONE]"
    assert 0.3 <= took < 1.5
    assert [o.status for o in outs] == [Status.ERROR]


async def test_failover_respects_the_ttft_budget_except_for_best_effort() -> None:
    tiers = [
        {"name": "fast", "class": "latency", "ttft_ms": 300, "tpot_ms": 100},
        {"name": "batch", "class": "best_effort"},
    ]
    async with hang_server() as (hang_url, accepted), serve_engines(1, profile="cpu-tiny") as fleet:
        cfg = router_config(
            [hang_url, fleet.urls[0]],
            policy="least-request",  # ties in config order: the hung backend is always ranked first
            tiers=tiers,
            extra={"health": QUIET_HEALTH, "timeouts": {"first_byte_s": 0.4}},
        )
        async with run_router(cfg) as router:
            url = router.url + "/v1/chat/completions"
            s_fast, b_fast = await post(url, {**CHAT, "stream": True}, {"x-slo-tier": "fast"})
            s_batch, b_batch = await post(url, {**CHAT, "stream": True}, {"x-slo-tier": "batch"})
            fwd = router.services.forwarder
            assert router.services.tracker.all_zero()
    assert s_fast == 504
    msg = orjson.loads(b_fast)["error"]["message"]
    assert "no first byte in time" in msg and "TTFT deadline has passed" in msg
    assert s_batch == 200 and b_batch.endswith(b"data: [DONE]\n\n")
    assert fwd.budget_stops == 1 and fwd.retries == 1
    assert accepted[0] >= 2


async def test_router_shutdown_with_streams_in_flight_finalizes_each_once() -> None:
    async with serve_engines(2, profile="cpu-tiny") as fleet:
        cfg = router_config(fleet.urls, extra={"server": {"shutdown_grace_s": 0.2}, "health": QUIET_HEALTH})
        outs: list[Outcome] = []
        async with run_router(cfg) as router:
            router.services.tracker.add_listener(outs.append)
            body = {**CHAT, "max_tokens": 3000, "ignore_eos": True, "stream": True}
            session = aiohttp.ClientSession()
            started = asyncio.Event()
            n = 8

            async def stream() -> str:
                try:
                    async with session.post(router.url + "/v1/chat/completions", json=body) as r:
                        await r.content.readany()
                        started.set()
                        await r.read()
                        return "complete"
                except aiohttp.ClientError:
                    return "cut"

            tasks = [asyncio.create_task(stream()) for _ in range(n)]
            tracker = router.services.tracker
            await poll(lambda: sum(1 for r in tracker.requests.values() if r.first_token_at) == n, 10)
            assert sum(e.model.num_running for e in fleet.engines) == n
        # the router is gone: every stream was cut, every request finalized exactly once
        got = await asyncio.gather(*tasks)
        await session.close()
        assert got == ["cut"] * n
        assert len(outs) == n and len({o.rid for o in outs}) == n
        assert tracker.all_zero()
        await poll(lambda: sum(e.model.num_running for e in fleet.engines) == 0, 2.0)
