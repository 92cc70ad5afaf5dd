"""A stream's two bounded waits after the first byte: the engine's silence (the idle
watchdog, one timer per stream) and a client that stops reading (back-pressure on the
direct chunk writes, then the router drops it)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from aiohttp import web

from slorouter.values import Outcome, Status
from tests.faults.test_faults import poll
from tests.faults.test_timeouts import CHAT, QUIET_HEALTH
from tests.routerkit import router_config, run_router
from tests.servekit import serve_app

DONE = b"data: [DONE]\n\n"


def event(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"


@asynccontextmanager
async def engine(
    events: int, gap_s: float, text: str = "x", state: dict[str, bool] | None = None
) -> AsyncIterator[str]:
    """Streams ``events`` token events ``gap_s`` apart (``events=0``: forever, as fast as
    the connection takes them), then a final event and ``[DONE]``. ``state["cancelled"]``
    is set when the router drops the connection mid-stream."""

    async def gen(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            i = 0
            while events == 0 or i < events:
                await resp.write(event(text))
                i += 1
                if gap_s:
                    await asyncio.sleep(gap_s)
        except (asyncio.CancelledError, ConnectionError):
            if state is not None:
                state["cancelled"] = True
            raise
        await resp.write(event("z", "length") + DONE)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/{tail:.*}", gen)
    async with serve_app(app, handler_cancellation=True) as base:
        yield base


async def test_an_engine_that_keeps_talking_below_idle_s_is_not_cut_however_long_the_stream() -> None:
    # 12 events 0.1 s apart: 1.2 s in all, four times idle_s; no silence reaches 0.3 s
    async with engine(12, 0.1) as url:
        tiers = [{"name": "chat", "class": "best_effort", "timeouts": {"idle_s": 0.3}}]
        cfg = router_config([url], tiers=tiers, extra={"health": QUIET_HEALTH})
        async with run_router(cfg) as router:
            outs: list[Outcome] = []
            router.services.tracker.add_listener(outs.append)
            reader, writer = await asyncio.open_connection("127.0.0.1", int(router.url.rsplit(":", 1)[1]))
            body = orjson.dumps({**CHAT, "stream": True})
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
            )
            async with asyncio.timeout(10):
                raw = await reader.read(-1)
            writer.close()
            await poll(lambda: len(outs) == 1, 5)
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    payload, pos = b"", 0
    while True:  # the chunked framing is exact: sizes, CRLFs, and the last chunk
        eol = chunked.index(b"\r\n", pos)
        size = int(chunked[pos:eol], 16)
        assert chunked[eol + 2 + size : eol + 4 + size] == b"\r\n"
        payload += chunked[eol + 2 : eol + 2 + size]
        pos = eol + 4 + size
        if size == 0:
            break
    assert pos == len(chunked)
    assert payload == event("x") * 12 + event("z", "length") + DONE
    assert outs[0].status is Status.OK and outs[0].output_tokens == 13


async def test_a_client_that_stops_reading_is_dropped_after_idle_s_and_the_engine_freed() -> None:
    state: dict[str, bool] = {}
    async with engine(0, 0.0, text="y" * 16384, state=state) as url:
        tiers = [{"name": "chat", "class": "best_effort", "timeouts": {"idle_s": 0.3}}]
        cfg = router_config([url], tiers=tiers, extra={"health": QUIET_HEALTH})
        async with run_router(cfg) as router:
            outs: list[Outcome] = []
            router.services.tracker.add_listener(outs.append)
            port = int(router.url.rsplit(":", 1)[1])
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills quickly
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, ("127.0.0.1", port))
            body = orjson.dumps({**CHAT, "max_tokens": 10**6, "stream": True})
            await loop.sock_sendall(
                sock,
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body),
            )
            first = await loop.sock_recv(sock, 4096)  # the head and the first bytes, then nothing
            assert first.startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
            await poll(lambda: len(outs) == 1, timeout_s=10)
            took = time.monotonic() - t0
            await poll(lambda: state.get("cancelled", False), timeout_s=5)
            assert router.services.forwarder.slow_clients == 1
            sock.close()
    assert outs[0].status is Status.CANCELLED
    assert outs[0].output_tokens > 0
    assert took >= 0.3  # not before the client had idle_s to read
