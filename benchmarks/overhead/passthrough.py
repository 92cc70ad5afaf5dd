#!/usr/bin/env python3
"""A minimal aiohttp + uvloop pass-through proxy: the floor for an aiohttp-based router.

``python -m benchmarks.overhead.passthrough --port P --upstream URL [--upstream URL ...]`` forwards every
POST to the next upstream (round-robin) with one pooled ClientSession and copies the
response body to the client read by read (``iter_any``), no parsing, no accounting. Used
by ``scripts/bench_overhead.py`` as the ``aiohttp-min`` target (the reference
"minimal aiohttp pass-through + uvloop" of docs/overhead.md), so slorouter's own cost
shows above it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def build(upstreams: list[str]) -> web.Application:
    nxt = itertools.cycle(upstreams)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session = request.app[SESSION]
        async with session.post(
            next(nxt) + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as up:
            resp = web.StreamResponse(
                status=up.status, headers={"Content-Type": up.headers.get("Content-Type", "")}
            )
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/health", health)
    app.router.add_post("/{tail:.*}", forward)
    return app


async def serve(port: int, upstreams: list[str]) -> None:
    runner = web.AppRunner(build(upstreams), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", action="append", required=True)
    a = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(a.port, [u.rstrip("/") for u in a.upstream]))


if __name__ == "__main__":
    main()
