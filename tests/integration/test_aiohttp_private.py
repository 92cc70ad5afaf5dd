"""The two places slorouter touches aiohttp internals, each behind one named function
(see their docstrings for why the public API does not do): these tests fail when an
aiohttp upgrade changes what the function relies on, instead of the fix silently
stopping to work.

* :func:`slorouter.http.expect.escape_expect_header` wraps ``Application._make_request``;
* :func:`slorouter.proxy.upstream.arm_idle_timeout` sets the connection protocol's
  per-read timer."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from slorouter.proxy.upstream import arm_idle_timeout
from slorouter.simengine.server import serve_engines
from tests.routerkit import router_config, run_router
from tests.servekit import serve_app


async def raw_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(5.0):
            return await reader.read(4096)
    finally:
        writer.close()


def test_the_request_factory_still_has_the_shape_the_patch_wraps() -> None:
    make = web.Application._make_request
    params = list(inspect.signature(make).parameters)
    assert params[:2] == ["self", "message"], params


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),  # a route of the router
        ("POST", "/no/such/route"),  # aiohttp's 404 (a system route: no public expect hook)
        ("POST", "/health"),  # aiohttp's 405
    ],
)
async def test_an_unknown_non_utf8_expect_gets_417_not_500(method: str, path: str) -> None:
    async with serve_engines(1, profile="cpu-tiny") as fleet, run_router(router_config(fleet.urls)) as r:
        port = int(r.url.rsplit(":", 1)[1])
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
            + b"Expect: 100-\xff\xfe\r\n\r\n"
        )
        answer = await raw_request(port, head)
    assert answer.startswith(b"HTTP/1.1 417 "), answer[:200]
    assert b"100-\\xff\\xfe" in answer  # the value, escaped to ASCII


@asynccontextmanager
async def silent_after_first_chunk() -> AsyncIterator[str]:
    """A server that sends its headers and one chunk, then nothing."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"first")
        await asyncio.Event().wait()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    async with serve_app(app, handler_cancellation=True) as base:
        yield base + "/"


async def test_arm_idle_timeout_fails_a_read_after_the_silence() -> None:
    async with (
        silent_after_first_chunk() as url,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s,
        s.get(url) as up,
    ):
        assert await up.content.readany() == b"first"
        arm_idle_timeout(up, 0.2)
        t0 = time.monotonic()
        with pytest.raises(aiohttp.ServerTimeoutError):
            async with asyncio.timeout(5.0):  # a TimeoutError here: the timer was not armed
                await up.content.readany()
        took = time.monotonic() - t0
    assert 0.15 <= took < 2.0, took
