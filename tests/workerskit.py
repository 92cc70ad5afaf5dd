"""Test helpers for ``slorouter serve --workers N``: the router as a subprocess in front of
simulated engines, asked on a fresh connection each time (so the kernel may pick any
worker), stopped (SIGTERM, then SIGKILL) when the test is done."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml

ADMIN_ENV = "SLOROUTER_TEST_ADMIN"


def write_config(urls: list[str], path: Path) -> None:
    """One latency tier, the engines as backends, least-request, the admin token from ADMIN_ENV."""
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": 8080, "shutdown_grace_s": 30},
                "tiers": [{"name": "chat", "class": "latency", "ttft_ms": 10_000, "tpot_ms": 500}],
                "backends": [{"name": f"e{i}", "url": u, "tier": "chat"} for i, u in enumerate(urls)],
                "routing": {"default_tier": "chat", "allow_anonymous": True},
                "policy": {"kind": "least-request"},
                "admin": {"token_env": ADMIN_ENV},
            }
        )
    )


@contextlib.asynccontextmanager
async def serve_workers(
    cfg: Path, admin: str, workers: int = 2
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``slorouter serve -c CFG --workers N`` with the admin token ``admin``: (process, URL)."""
    env = {**os.environ, ADMIN_ENV: admin}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "slorouter.cli",
        "serve",
        "-c",
        str(cfg),
        "--workers",
        str(workers),
        # any free port: with SO_REUSEPORT a fixed one would be shared, silently, with any
        # other router of this user listening there (another test run's, a leftover)
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        m = re.search(rf"{workers} workers on (http://127\.0\.0\.1:\d+)", line)
        assert m, line
        yield proc, m.group(1)
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 20)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def get(url: str, path: str, admin: str) -> tuple[dict[str, str], str]:
    """One GET (200 expected) on a fresh connection, with the admin token: (headers, body)."""
    conn = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.get(url + path, headers={"Authorization": f"Bearer {admin}"}) as r,
    ):
        assert r.status == 200
        return dict(r.headers), await r.text()


async def chat(url: str, max_tokens: int, stream: bool) -> int:
    """One chat completion (``ignore_eos``) through its own client, so its own connection:
    the output tokens received (stream: content chunks; else the usage's count)."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as c:
        args: dict[str, Any] = {
            "model": "sim-llama",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "extra_body": {"ignore_eos": True},
        }
        if not stream:
            r = await c.chat.completions.create(**args)
            assert r.usage is not None
            return r.usage.completion_tokens
        n = 0
        s = await c.chat.completions.create(**args, stream=True)
        async for ch in s:
            if ch.choices and ch.choices[0].delta.content:
                n += 1
        return n


async def until(pred: Callable[[], Awaitable[Any]], within_s: float, what: str) -> Any:
    """Ask ``pred`` again and again until it answers something true (that is returned)."""
    deadline = time.monotonic() + within_s
    while True:
        got = await pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
