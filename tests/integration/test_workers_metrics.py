"""``/metrics`` of ``slorouter serve --workers 2`` is the whole host's, whichever worker
the kernel gives the scrape to: counters and histograms summed over both workers, the
fleet view once (from the leader), per-worker views labelled ``worker``.

Real processes, real sockets: simulated engines in this test's loop, the router as a
subprocess, the real ``openai`` client (a client per request, so each request opens its
own connection and the kernel spreads them over the workers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from slorouter.simengine.server import serve_engines
from tests.promtext import values

STREAMS = 8  # long streams, to see both workers place requests
SHORT = 12  # then quick non-streaming requests
TOKENS = 40
SHORT_TOKENS = 5
ADMIN = "workers-metrics-admin"


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


async def _get(url: str, path: str) -> tuple[dict[str, str], str]:
    """One GET on a fresh connection (so the kernel may pick either worker)."""
    conn = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.get(url + path, headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        assert r.status == 200
        return dict(r.headers), await r.text()


async def _request(url: str, stream: bool) -> int:
    """One chat completion through its own client (its own connection): tokens received."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as c:
        args: dict[str, Any] = {
            "model": "sim-llama",
            "messages": [{"role": "user", "content": "hi"}],
            "extra_body": {"ignore_eos": True},
        }
        if not stream:
            r = await c.chat.completions.create(**args, max_tokens=SHORT_TOKENS)
            assert r.usage is not None
            return r.usage.completion_tokens
        n = 0
        s = await c.chat.completions.create(**args, max_tokens=TOKENS, stream=True)
        async for ch in s:
            if ch.choices and ch.choices[0].delta.content:
                n += 1
        return n


async def _until(pred: Any, within_s: float, what: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        got = await pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


def _total(text: str, name: str) -> float:
    return sum(values(text, name).values())


@pytest.mark.timeout(90)
async def test_any_worker_scrape_counts_both_workers(tmp_path: Path) -> None:
    # h100-70b: ~40 ms per step, so a 40-token stream lasts ~1.6 s
    async with serve_engines(2, profile="h100-70b", seed=5) as fleet:
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

            seen: set[int] = set()

            async def both() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    seen.add(int(json.loads((await _get(url, "/health"))[1])["worker"]))
                return seen == {0, 1}

            await _until(both, 20, "both workers to answer")

            # both workers place requests: while the streams run, each has some of its own
            streams = [asyncio.create_task(_request(url, stream=True)) for _ in range(STREAMS)]
            own: dict[int, int] = {}

            async def placed_by_both() -> bool:
                b = json.loads((await _get(url, "/admin/backends"))[1])
                if sum(x["inflight"]["requests"] for x in b["backends"]) == STREAMS:
                    own[b["worker"]] = sum(x["inflight"]["own_requests"] for x in b["backends"])
                return len(own) == 2

            await _until(placed_by_both, 15, "both workers to see every stream")
            assert sum(own.values()) == STREAMS and all(0 < n < STREAMS for n in own.values()), own
            got = await asyncio.wait_for(asyncio.gather(*streams), 30)
            assert got == [TOKENS] * STREAMS
            short = await asyncio.gather(*(_request(url, stream=False) for _ in range(SHORT)))
            assert short == [SHORT_TOKENS] * SHORT
            n = STREAMS + SHORT

            # every scrape, whichever worker answers it, counts every request of both
            answered: set[str] = set()
            for _ in range(40):
                headers, text = await _get(url, "/metrics")
                answered.add(headers["X-Slorouter-Worker"])
                assert values(text, "slorouter_requests_total") == {
                    frozenset({("tier", "chat"), ("status", "ok")}): n
                }
                assert (
                    _total(text, "slorouter_output_tokens_total") == STREAMS * TOKENS + SHORT * SHORT_TOKENS
                )
                assert _total(text, "slorouter_ttft_seconds_count") == n
                assert _total(text, "slorouter_e2e_seconds_count") == n
                assert _total(text, "slorouter_queue_wait_seconds_count") == n
                inf = values(text, "slorouter_e2e_seconds_bucket")[
                    frozenset({("tier", "chat"), ("le", "+Inf")})
                ]
                assert inf == n
                # nothing in flight now, summed over the workers
                assert _total(text, "slorouter_backend_inflight_requests") == 0
                # one leader on the host, the fleet view once (not once per worker)
                assert _total(text, "slorouter_leader") == 1
                assert set(values(text, "slorouter_fleet_routers").values()) == {2}
                assert len(values(text, "slorouter_fleet_inflight_requests")) == 2  # per backend
                # a worker's own view: one series per worker
                assert {dict(k)["worker"] for k in values(text, "slorouter_sync_peers")} == {"0", "1"}
                assert set(values(text, "slorouter_sync_peers").values()) == {1}
                if answered == {"0", "1"}:
                    break
            assert answered == {"0", "1"}, answered
        finally:
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 20)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
