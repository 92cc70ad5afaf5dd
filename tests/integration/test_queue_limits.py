"""The router queue's limits from the config: ``policy.max_queued`` (beyond it: 429 at
once) and ``policy.max_queue_wait_s`` (then 429), on a real router in front of a
simulated engine that is busy enough for the policy to defer. Both answers carry
``Retry-After``."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from slorouter.engine.profiles import load_profile
from slorouter.simengine.server import serve_engines
from tests.routerkit import router_config, run_router

# cpu-tiny: step ≈ 19 ms + 2 ms per running sequence; with 6 bulk streams resident a 7th
# sequence makes it ≈ 33 ms, above the tier's 30 ms TPOT: slo-pack defers the request
TIERS = [
    {"name": "t", "class": "latency", "ttft_ms": 60_000, "tpot_ms": 30},
    {"name": "bulk", "class": "best_effort"},
]
BULK = 6


def body(max_tokens: int) -> dict[str, Any]:
    return {
        "model": "sim-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": True,
    }


async def _bulk_stream(s: aiohttp.ClientSession, url: str, started: asyncio.Event, n: list[int]) -> None:
    async with s.post(url, json=body(2000), headers={"x-slo-tier": "bulk"}) as r:
        assert r.status == 200
        await r.content.readline()  # the first event: the request is resident
        n[0] += 1
        if n[0] == BULK:
            started.set()
        async for _ in r.content:
            pass


@pytest.mark.parametrize(
    ("limits", "status", "says"),
    [
        ({"max_queued": 0}, 429, "queue is full"),
        ({"max_queue_wait_s": 0.5}, 429, "waited its tier's limit"),
    ],
)
async def test_queue_limits_from_the_config(
    tmp_path: Path, limits: dict[str, Any], status: int, says: str
) -> None:
    profile = tmp_path / "cpu-tiny.json"
    load_profile("cpu-tiny").save(profile)
    async with serve_engines(1, profile="cpu-tiny", seed=1) as fleet:
        cfg = router_config(
            fleet.urls,
            policy="slo-pack",
            tiers=TIERS,
            backend_tiers=["t"],
            extra={"models": {"profile": str(profile)}, "policy": {"kind": "slo-pack", **limits}},
        )
        async with run_router(cfg) as router, aiohttp.ClientSession() as s:
            url = router.url + "/v1/chat/completions"
            started = asyncio.Event()
            count = [0]
            bulk = [asyncio.create_task(_bulk_stream(s, url, started, count)) for _ in range(BULK)]
            try:
                await asyncio.wait_for(started.wait(), 20)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                async with s.post(url, json=body(4), headers={"x-slo-tier": "t"}) as r:
                    err = await r.json()
                    waited = loop.time() - t0
                assert r.status == status, err
                assert says in err["error"]["message"], err
                assert "retry-after" in {k.lower() for k in r.headers}
                if "max_queue_wait_s" in limits:
                    assert 0.5 <= waited < 5.0
            finally:
                for t in bulk:
                    t.cancel()
                for t in bulk:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            assert router.services.dispatcher.waiting == 0
