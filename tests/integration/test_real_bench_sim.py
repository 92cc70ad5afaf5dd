"""The real-vLLM benchmark's own machinery (``benchmarks.real``) against simulated vLLM
engines, so it is exercised without vLLM: its requests go through the load generator's
client (token-bearing chunks only: vLLM's leading role-only chunk is no token), and a
policy run judges every request with the router's verdict (the one SLO judge)."""

from __future__ import annotations

import aiohttp

from benchmarks import real as bench
from slorouter.simengine.server import serve_engines

TOKENS = 8


async def test_a_stream_is_timed_by_its_token_chunks() -> None:
    async with (
        serve_engines(1, model=bench.MODEL) as fleet,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
    ):
        rec = await bench.stream_one(s, fleet.urls[0], None, TOKENS)
        bad = await bench.stream_one(s, fleet.urls[0] + "/nowhere", None, TOKENS)
    assert rec.ok and rec.tier is None
    assert len(rec.gaps_s) == TOKENS - 1  # one gap between each two of the 8 tokens
    assert rec.ttft_s > 0 and all(g >= 0 for g in rec.gaps_s)
    assert not bad.ok and bad.gaps_s == [] and bad.ttft_s == 0.0


async def test_a_policy_run_counts_what_the_router_judges_met() -> None:
    async with serve_engines(2, model=bench.MODEL) as fleet:
        loose = [
            {"name": "tight", "class": "latency", "ttft_ms": 60_000, "tpot_ms": 60_000},
            {"name": "loose", "class": "latency", "ttft_ms": 60_000, "tpot_ms": 60_000},
        ]
        users = {"tight": 1, "loose": 2}
        easy = await bench.run_policy("round-robin", fleet.urls, loose, users, 1.0, TOKENS, None, None)
        impossible = [{**t, "ttft_ms": 0.001, "tpot_ms": 0.001} for t in loose]
        hard = await bench.run_policy("round-robin", fleet.urls, impossible, users, 1.0, TOKENS, None, None)
    for tier in users:
        assert easy[tier]["requests"] > 0 and easy[tier]["errors"] == 0
        assert easy[tier]["met"] == easy[tier]["requests"] and easy[tier]["attainment"] == 1.0
        assert hard[tier]["requests"] > 0 and hard[tier]["met"] == 0
    assert easy["counters_zero"] and hard["counters_zero"]
