"""Test helper: serve a hand-written aiohttp app (a fake engine, a webhook receiver) on an
ephemeral 127.0.0.1 port for the length of a ``with`` block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serve_app(app: web.Application, *, handler_cancellation: bool = False) -> AsyncIterator[str]:
    """``app`` listening on 127.0.0.1: its base URL (``http://127.0.0.1:PORT``); stopped on exit."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=handler_cancellation)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
