"""An engine that closes an idle keep-alive connection just as the router sends on it.

vLLM (uvicorn) closes idle connections after 5 s; a router that pools connections longer
races that close and gets ``ServerDisconnected`` before any answer. The engine never read
the request, so the router sends it again on a fresh connection — on the same backend,
not counted as a backend failure (no ejection, no failover). The engine here closes
*every* reused connection instead of answering, so each request after the first one on a
connection meets the race, deterministically.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson

from tests.faults.test_faults import poll
from tests.promtext import value
from tests.routerkit import router_config, run_router

BODY = orjson.dumps(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": "ok", "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)


@asynccontextmanager
async def closes_reused_connections() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """HTTP/1.1 server: answers the first request of each connection (keep-alive), closes
    the connection without a byte when a second request arrives on it."""
    seen = {"connections": 0, "answered": 0, "closed_unanswered": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            for n in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                await reader.readexactly(length)
                if n == 1:
                    seen["closed_unanswered"] += 1
                    break
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
                    + BODY
                )
                await writer.drain()
                seen["answered"] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_a_pooled_connection_closed_by_the_engine_is_resent_not_failed() -> None:
    async with closes_reused_connections() as (url, seen):
        # one backend: no failover could hide a failure
        cfg = router_config([url], extra={"health": {"interval_s": 60.0, "failures": 1}})
        async with run_router(cfg) as rt, aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(4):
                async with s.post(
                    rt.url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1}
                ) as r:
                    statuses.append(r.status)
                    assert orjson.loads(await r.read())["choices"][0]["text"] == "ok"
            assert statuses == [200] * 4
            fwd = rt.services.forwarder
            assert fwd.resends >= 3  # requests 2..4 each met a closing pooled connection
            assert fwd.retries == 0  # not a failover to another backend
            await poll(lambda: rt.services.tracker.all_zero(), 5.0)
            async with s.get(rt.url + "/metrics") as r:
                text = await r.text()
            assert value(text, "slorouter_upstream_resends_total") == fwd.resends
            assert rt.services.tracker.health.healthy == {"e0"}  # not ejected
        assert seen["closed_unanswered"] >= 3 and seen["answered"] >= 4
