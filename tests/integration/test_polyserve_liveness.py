"""A request whose SLO no server can meet (its TPOT below the engine's idle step) is
still served, late and best effort, instead of waiting in the queue for ever."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from slorouter.engine.profiles import load_profile
from slorouter.simengine.server import serve_engines
from slorouter.values import Outcome, Status
from tests.routerkit import router_config, run_router


@pytest.mark.parametrize("policy", ["polyserve", "slo-pack"])
async def test_unmeetable_tpot_is_served_late_not_stranded(tmp_path: Path, policy: str) -> None:
    profile = tmp_path / "cpu-tiny.json"
    load_profile("cpu-tiny").save(profile)  # the router knows the engine's real step time
    tiers = [{"name": "t", "class": "latency", "ttft_ms": 200, "tpot_ms": 15}]
    cfg_tiers = tiers
    async with serve_engines(1, profile="cpu-tiny", seed=1) as fleet:  # idle step ≈ 21 ms > 15 ms
        cfg = router_config(
            fleet.urls, policy=policy, tiers=cfg_tiers, extra={"models": {"profile": str(profile)}}
        )
        async with run_router(cfg) as router:
            outs: list[Outcome] = []
            router.services.tracker.add_listener(outs.append)
            body = {
                "model": "sim-llama",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
                "stream": True,
            }
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    router.url + "/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=20)
                ) as r,
            ):
                assert r.status == 200
                data = await r.read()
            assert data.endswith(b"data: [DONE]\n\n")
            assert [o.status for o in outs] == [Status.OK]
            assert outs[0].output_tokens == 4
            assert router.services.tracker.all_zero()
