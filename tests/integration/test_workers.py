"""``slorouter serve --workers 2``: two full router processes on one port (SO_REUSEPORT),
one load picture through shared memory, and a clean drain on SIGTERM.

Real processes, real sockets: simulated engines in this test's loop, the router as a
subprocess, the real ``openai`` client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from slorouter.simengine.server import serve_engines

STREAMS = 8
TOKENS = 60
ADMIN = "workers-test-admin"


def _config(urls: list[str], path: Path) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": 8080, "shutdown_grace_s": 30},
                "tiers": [{"name": "chat", "class": "latency", "ttft_ms": 10_000, "tpot_ms": 500}],
                "backends": [{"name": f"e{i}", "url": u, "tier": "chat"} for i, u in enumerate(urls)],
                "routing": {"default_tier": "chat", "allow_anonymous": True},
                "policy": {"kind": "least-request"},
                "admin": {"token_env": "SLOROUTER_TEST_ADMIN"},
            }
        )
    )


async def _get(url: str, path: str) -> Any:
    """One request on a fresh connection (so the kernel may pick either worker)."""
    conn = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.get(url + path, headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        return await r.json()


async def _stream(url: str) -> int:
    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    n = 0
    s = await c.chat.completions.create(
        model="sim-llama",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=TOKENS,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for ch in s:
        if ch.choices and ch.choices[0].delta.content:
            n += 1
    await c.close()
    return n


async def _until(pred: Any, within_s: float, what: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        got = await pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(90)
async def test_two_workers_serve_share_the_view_and_drain(tmp_path: Path) -> None:
    # h100-70b: ~40 ms per step, so 60 tokens stream for ~2.5 s
    async with serve_engines(2, profile="h100-70b", seed=3) as fleet:
        cfg = tmp_path / "router.yaml"
        _config(fleet.urls, cfg)
        env = {**os.environ, "SLOROUTER_TEST_ADMIN": ADMIN}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "slorouter.cli",
            "serve",
            "-c",
            str(cfg),
            "--workers",
            "2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            m = re.search(r"2 workers on (http://127\.0\.0\.1:\d+)", line)
            assert m, line
            url = m.group(1)

            # both workers answer on the one port
            seen: set[int] = set()

            async def both() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    seen.add((await _get(url, "/health"))["worker"])
                return seen == {0, 1}

            await _until(both, 20, "both workers to answer")

            streams = [asyncio.create_task(_stream(url)) for _ in range(STREAMS)]

            # each worker's policy counts every in-flight request, its own and the other's
            views: dict[int, tuple[int, int]] = {}

            async def shared() -> bool:
                b = await _get(url, "/admin/backends")
                total = sum(x["inflight"]["requests"] for x in b["backends"])
                own = sum(x["inflight"]["own_requests"] for x in b["backends"])
                if total == STREAMS:
                    views[b["worker"]] = (total, own)
                return len(views) == 2

            await _until(shared, 15, "both workers to see all streams")
            # the streams were really spread: neither worker placed them all itself
            assert sum(own for _, own in views.values()) == STREAMS, views
            assert all(own < STREAMS for _, own in views.values()), views

            # SIGTERM while streaming: nothing lost, clean exit
            proc.send_signal(signal.SIGTERM)
            got = await asyncio.wait_for(asyncio.gather(*streams), 30)
            assert got == [TOKENS] * STREAMS
            assert await asyncio.wait_for(proc.wait(), 40) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
