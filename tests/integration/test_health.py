"""Active health probes against live servers: hysteresis (one lost probe never ejects),
ejection and return within the configured thresholds, and the state shown in /health
and /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from slorouter.simengine.server import serve_engines
from tests.faults.test_faults import poll
from tests.promtext import value
from tests.routerkit import router_config, run_router
from tests.servekit import serve_app

HEALTH = {"interval_s": 0.1, "timeout_s": 0.2, "failures": 3, "successes": 2, "cooldown_s": 0.5}


@asynccontextmanager
async def flaky_health() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """/health answers 503 while ``state["down"]`` is set, or for the next
    ``state["fail_next"]`` probes; counts probes."""
    state = {"down": 0, "fail_next": 0, "probes": 0}

    async def health(request: web.Request) -> web.Response:
        state["probes"] += 1
        if state["down"] or state["fail_next"] > 0:
            state["fail_next"] = max(0, state["fail_next"] - 1)
            return web.Response(status=503)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    async with serve_app(app) as base:
        yield base, state


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_probes_eject_and_readmit_with_hysteresis() -> None:
    async with flaky_health() as (flaky, state), serve_engines(1, profile="cpu-tiny") as fleet:
        cfg = router_config([flaky, fleet.urls[0]], extra={"health": HEALTH})
        async with run_router(cfg) as router:
            healthy = router.services.tracker.health
            await poll(lambda: state["probes"] >= 2, 2.0)

            # one failed probe, then two: never ejected (3 consecutive are needed)
            for n in (1, 2):
                state["fail_next"] = n
                start = state["probes"]
                t_end = time.monotonic() + 0.6
                while time.monotonic() < t_end:
                    assert "e0" in healthy.healthy
                    await asyncio.sleep(0.005)
                assert state["probes"] >= start + n + 2

            state["down"] = 1
            t0 = time.monotonic()
            await poll(lambda: "e0" not in healthy.healthy, 3 * (0.11 + 0.2) + 0.1 + 1.0)
            took_eject = time.monotonic() - t0
            status, body = await get(router.url + "/health")
            assert status == 200 and '"e0":{"routable":false,"probe":"down"' in body
            _, metrics = await get(router.url + "/metrics")
            assert value(metrics, "slorouter_backend_healthy", backend="e0") == 0
            assert value(metrics, "slorouter_backend_probe_up", backend="e0") == 0
            assert value(metrics, "slorouter_backend_ejections_total", backend="e0") == 1

            state["down"] = 0
            t0 = time.monotonic()
            await poll(lambda: "e0" in healthy.healthy, 2 * 0.11 + 0.2 + 1.0)
            took_back = time.monotonic() - t0
            _, metrics = await get(router.url + "/metrics")
            assert value(metrics, "slorouter_backend_healthy", backend="e0") == 1
            assert value(metrics, "slorouter_backend_circuit", backend="e0", state="closed") == 1
    # three probes apart at least, two probes apart at least (hysteresis both ways)
    assert took_eject >= 2 * 0.09 and took_back >= 0.09
    print(f"\nHEALTH eject {took_eject:.3f} s, back {took_back:.3f} s")
