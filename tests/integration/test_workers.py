"""``slorouter serve --workers 2``: two full router processes on one port (SO_REUSEPORT),
one load picture through shared memory, and a clean drain on SIGTERM.

Real processes, real sockets: simulated engines in this test's loop, the router as a
subprocess, the real ``openai`` client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from slorouter.simengine.server import serve_engines
from tests.workerskit import chat, get, serve_workers, until, write_config

STREAMS = 8
TOKENS = 60
ADMIN = "workers-test-admin"


async def _json(url: str, path: str) -> Any:
    return json.loads((await get(url, path, ADMIN))[1])


@pytest.mark.timeout(90)
async def test_two_workers_serve_share_the_view_and_drain(tmp_path: Path) -> None:
    # h100-70b: ~40 ms per step, so 60 tokens stream for ~2.5 s
    async with serve_engines(2, profile="h100-70b", seed=3) as fleet:
        cfg = tmp_path / "router.yaml"
        write_config(fleet.urls, cfg)
        async with serve_workers(cfg, ADMIN) as (proc, url):
            # both workers answer on the one port
            seen: set[int] = set()

            async def both() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    seen.add((await _json(url, "/health"))["worker"])
                return seen == {0, 1}

            await until(both, 20, "both workers to answer")

            streams = [asyncio.create_task(chat(url, TOKENS, stream=True)) for _ in range(STREAMS)]

            # each worker's policy counts every in-flight request, its own and the other's
            views: dict[int, tuple[int, int]] = {}

            async def shared() -> bool:
                b = await _json(url, "/admin/backends")
                total = sum(x["inflight"]["requests"] for x in b["backends"])
                own = sum(x["inflight"]["own_requests"] for x in b["backends"])
                if total == STREAMS:
                    views[b["worker"]] = (total, own)
                return len(views) == 2

            await until(shared, 15, "both workers to see all streams")
            # the streams were really spread: neither worker placed them all itself
            assert sum(own for _, own in views.values()) == STREAMS, views
            assert all(own < STREAMS for _, own in views.values()), views

            # SIGTERM while streaming: nothing lost, clean exit
            proc.send_signal(signal.SIGTERM)
            got = await asyncio.wait_for(asyncio.gather(*streams), 30)
            assert got == [TOKENS] * STREAMS
            assert await asyncio.wait_for(proc.wait(), 40) == 0
