"""The live proxy runs the same policy as the simulator: a mixed-tier load through the
real router to real (simulated, real-time) engines. With ``round-robin`` the tight tier
shares every server with the loose tier's crowd and misses its per-token deadlines;
with ``polyserve`` it keeps a server of its own bin and meets them.

Engines: ``cpu-tiny`` (step ≈ 19 ms + 2 ms per running sequence). 4 ``fast`` streams
(TPOT 40 ms) and 32 ``slow`` ones (TPOT 250 ms), 80 tokens each, all at once, on two
servers (one per bin). Round robin: ~18 sequences per server, ≈ 55 ms steps — every
fast token late by ~15 ms, far beyond the TTFT slack after 80 tokens. Polyserve: the
fast server runs ~4 sequences, ≈ 27 ms steps. DSLO is the router's own measurement
(``Outcome.max_lateness_s``, from arrival at the router)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from slorouter.engine.profiles import BUILTIN_PROFILES
from slorouter.simengine.server import serve_engines
from slorouter.values import Outcome, Status
from tests.routerkit import router_config, run_router

TIERS = [
    {"name": "fast", "class": "latency", "ttft_ms": 600, "tpot_ms": 40},
    {"name": "slow", "class": "latency", "ttft_ms": 5000, "tpot_ms": 250},
]
TOKENS = 80


async def _stream(session: aiohttp.ClientSession, url: str, tier: str, i: int) -> None:
    body = {
        "model": "sim-llama",
        "prompt": f"request {i} of tier {tier}",
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    async with session.post(url + "/v1/completions", json=body, headers={"x-slo-tier": tier}) as r:
        assert r.status == 200, await r.text()
        async for _ in r.content.iter_any():
            pass


async def _run(policy: str, tmp_path: Path) -> dict[str, list[Outcome]]:
    prof = tmp_path / "cpu-tiny.json"
    BUILTIN_PROFILES["cpu-tiny"].save(prof)
    async with serve_engines(2, profile="cpu-tiny", seed=3) as fleet:
        cfg = router_config(
            fleet.urls,
            policy=policy,
            params={"placement": "spread"} if policy == "polyserve" else None,
            tiers=TIERS,
            backend_tiers=["fast", "slow"],
            extra={"models": {"profile": str(prof)}},
        )
        async with run_router(cfg) as router:
            got: list[Outcome] = []
            router.services.tracker.add_listener(got.append)
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(timeout=timeout) as s:
                jobs = [_stream(s, router.url, "slow", i) for i in range(32)]
                jobs += [_stream(s, router.url, "fast", 100 + i) for i in range(4)]
                await asyncio.wait_for(asyncio.gather(*jobs), timeout=90)
    by: dict[str, list[Outcome]] = {"fast": [], "slow": []}
    for o in got:
        by[o.tier].append(o)
    return by


def _met(outs: list[Outcome]) -> int:
    return sum(
        1 for o in outs if o.status is Status.OK and o.max_lateness_s is not None and o.max_lateness_s <= 0
    )


@pytest.mark.timeout(120)
async def test_polyserve_keeps_the_tight_tier_on_time_where_round_robin_does_not(tmp_path: Path) -> None:
    rr = await _run("round-robin", tmp_path)
    ps = await _run("polyserve", tmp_path)
    for by in (rr, ps):
        assert len(by["fast"]) == 4 and len(by["slow"]) == 32
        assert all(o.status is Status.OK and o.output_tokens == TOKENS for o in by["fast"] + by["slow"])
    # round robin put the fast requests among the crowd: their steps exceed 40 ms
    assert _met(rr["fast"]) <= 1, [o.max_lateness_s for o in rr["fast"]]
    # polyserve kept them on the fast bin's server, and the slow tier still met its SLO
    assert _met(ps["fast"]) == 4, [o.max_lateness_s for o in ps["fast"]]
    assert {o.backend for o in ps["fast"]} == {"e0"}
    assert _met(ps["slow"]) >= 30
