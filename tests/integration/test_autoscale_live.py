"""Autoscaling end to end, on real sockets: the router (polyserve, autoscale in webhook
mode) in front of simulated engines, the reference receiver (``slorouter scaler-sim``'s
:class:`ScalerSim`) starting and stopping engines, and a second receiver that records the
raw webhook requests.

* A load step on the ``fast`` tier makes the router ask for a ``fast`` server (on-time
  requests fit on no server: the fast trigger); the receiver starts one, registers it,
  and queued requests reach it. When the load is gone, a server drains and is released
  (the receiver stops it). Every webhook body verifies against the HMAC.
* A receiver that is down and one that is slow (3 s per answer) hold deliveries for
  seconds; requests sent meanwhile are served as fast as ever.

Engines: ``cpu-tiny`` (step ≈ 19 ms + 2 ms per running sequence): under the fast tier's
50 ms TPOT a server holds about 15 streams. Small intervals, half-lives, cooldowns and
``idle_s`` keep the test to a few seconds of load.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from slorouter.actuation.webhook import DECISION_HEADER, SIGNATURE_HEADER, verify
from slorouter.http.admin import CONTROL
from slorouter.sim.profiles import BUILTIN_PROFILES
from slorouter.sim.server import serve_engines
from slorouter.tools.scaler_sim import ScalerSim
from slorouter.values import Outcome, Status
from tests.faults.test_faults import poll
from tests.integration.test_webhook_sender import receiver
from tests.routerkit import router_config, run_router

ADMIN_ENV, ADMIN = "TEST_AUTOSCALE_ADMIN", "autoscale-admin-token"
SECRET_ENV, SECRET = "TEST_AUTOSCALE_SECRET", "autoscale-webhook-secret"
TIERS = [
    {"name": "fast", "class": "latency", "ttft_ms": 3000, "tpot_ms": 50},
    {"name": "batch", "class": "best_effort"},
]
FIELDS = {"tier", "current", "desired", "add", "remove", "reason", "decision_id", "at"}


def autoscale(urls: list[str], **over: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "mode": "webhook",
        "interval_s": 0.2,
        "provisioning_delay_s": 0,
        "rate_half_life_s": 0.5,
        "trend_half_life_s": 1.0,
        "trigger_window_s": 1.0,
        "scale_out_cooldown_s": 0.5,
        "scale_in_cooldown_s": 1.5,
        "idle_s": 1.0,
        "tiers": {"fast": {"min_servers": 1, "max_servers": 3}, "batch": {"min_servers": 1}},
        "webhook": {"urls": urls, "secret_env": SECRET_ENV, "backoff_s": 0.05, "backoff_max_s": 0.2},
        **over,
    }


async def stream(client: openai.AsyncOpenAI, i: int, tokens: int) -> float:
    """One streamed chat completion of the fast tier; returns its time to first token."""
    t0 = time.perf_counter()
    ttft = -1.0
    s = await client.chat.completions.create(
        model="sim-llama",
        messages=[{"role": "user", "content": f"request {i}"}],
        max_tokens=tokens,
        stream=True,
        extra_body={"ignore_eos": True},
        extra_headers={"x-slo-tier": "fast"},
    )
    n = 0
    async for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft < 0:
                ttft = time.perf_counter() - t0
            n += 1
    assert n == tokens
    return ttft


@pytest.mark.timeout(90)
async def test_a_load_step_gets_a_server_for_its_tier_and_the_idle_one_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_ENV, ADMIN)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    prof = tmp_path / "cpu-tiny.json"
    BUILTIN_PROFILES["cpu-tiny"].save(prof)
    async with serve_engines(1, profile="cpu-tiny") as fleet, receiver() as rec:
        sim = ScalerSim("", ADMIN, SECRET.encode(), profile="cpu-tiny", name_prefix="sim")
        hook = await sim.start()
        try:
            cfg = router_config(
                fleet.urls,
                policy="polyserve",
                tiers=TIERS,
                backend_tiers=["batch"],  # the fast tier starts with no server: its floor asks for one
                extra={
                    "routing": {"default_tier": "fast"},
                    "admin": {"token_env": ADMIN_ENV},
                    "models": {"profile": str(prof)},
                    "autoscale": autoscale([hook, rec.url]),
                },
            )
            async with run_router(cfg) as router:
                sim.router = router.url
                tracker = router.services.tracker
                outcomes: list[Outcome] = []
                tracker.add_listener(outcomes.append)

                def fast_ids() -> list[str]:
                    return [b.id for b in tracker.backends.in_tier("fast")]

                await poll(lambda: len(fast_ids()) == 1, 10)  # the floor: one fast server
                first = fast_ids()[0]
                assert first.startswith("sim-fast-") and sim.engines[first].tier == "fast"
                asked_before = len(sim.decisions)

                # the load step: 30 streams at once, two servers' worth
                client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="EMPTY", max_retries=0)
                try:
                    ttfts = await asyncio.gather(*(stream(client, i, 40) for i in range(30)))
                finally:
                    await client.close()
                grown = [d for d in sim.decisions[asked_before:] if d["add"] > 0]
                assert grown and {d["tier"] for d in grown} == {"fast"}, sim.decisions
                assert any("fit on no server" in d["reason"] for d in grown)
                served = {o.backend for o in outcomes if o.status is Status.OK}
                added = served - {first}
                assert added and all(b.startswith("sim-fast-") for b in added)  # traffic reached it
                assert len(outcomes) == 30 and all(o.status is Status.OK for o in outcomes)
                assert max(ttfts) < 3.0  # queued requests waited for the new server, not past the TTFT

                # the load is gone: servers empty for idle_s are given back, down to the floor
                await poll(lambda: len(fast_ids()) == 1 and len(sim.engines) == 1, 20)
                released = [r for d in sim.decisions if d["tier"] == "fast" for r in d["remove"]]
                assert released and set(released) <= set(sim.started)  # its own engines, stopped
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(router.url + "/admin/backends", headers={"Authorization": f"Bearer {ADMIN}"}) as r,
                ):
                    removed = (await r.json())["removed"]
                assert {x["id"] for x in removed} == set(released)
                assert all(x["by"] == "scaler" and x["removable"] for x in removed)
                assert not sim.errors and sim.bad_signatures == 0 and sim.duplicates == 0

                # every webhook body, as sent, verifies against the HMAC and has the format
                await poll(lambda: len(rec.got) >= len(sim.decisions), 5)
                assert len(rec.got) == len(sim.decisions)
                for headers, raw in rec.got:
                    assert verify(SECRET.encode(), raw, headers[SIGNATURE_HEADER])
                    assert not verify(b"another secret", raw, headers[SIGNATURE_HEADER])
                    body = orjson.loads(raw)
                    assert set(body) == FIELDS and headers[DECISION_HEADER] == body["decision_id"]
                    assert isinstance(body["at"], float) and abs(body["at"] - time.time()) < 120
                assert [orjson.loads(raw) for _, raw in rec.got] == sim.decisions
        finally:
            await sim.stop()


@pytest.mark.timeout(60)
async def test_a_receiver_that_is_down_or_slow_never_delays_a_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_ENV, ADMIN)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    prof = tmp_path / "cpu-tiny.json"
    BUILTIN_PROFILES["cpu-tiny"].save(prof)
    async with receiver() as gone:
        down = gone.url  # closed once the block ends: connections are refused
    async with serve_engines(1, profile="cpu-tiny") as fleet, receiver(delay_s=3.0) as slow:
        hooks = {"urls": [down, slow.url], "secret_env": SECRET_ENV, "timeout_s": 10.0, "max_attempts": 50}
        hooks |= {"backoff_s": 0.05, "backoff_max_s": 0.2}
        cfg = router_config(
            fleet.urls,
            policy="polyserve",
            tiers=TIERS,
            backend_tiers=["fast"],
            extra={
                "routing": {"default_tier": "fast"},
                "models": {"profile": str(prof)},
                # the floor asks for a second fast server at once, and again every 0.5 s
                "autoscale": autoscale([], reask_after_s=0.5, webhook=hooks)
                | {"tiers": {"fast": {"min_servers": 2}}},
            },
        )
        async with run_router(cfg) as router:
            sc = router.app[CONTROL].scaling
            assert sc is not None and sc.sender is not None
            sender = sc.sender
            await poll(lambda: sender.in_flight == 2 and len(slow.got) >= 1, 5)  # both URLs stuck
            client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="EMPTY", max_retries=0)
            outcomes: list[Outcome] = []
            router.services.tracker.add_listener(outcomes.append)
            try:
                t0 = time.perf_counter()
                ttfts = await asyncio.gather(*(stream(client, i, 20) for i in range(8)))
                took = time.perf_counter() - t0
            finally:
                await client.close()
            # meanwhile: the slow receiver still holds its first delivery, the down one is retried
            assert sender.in_flight == 2 and sender.stats["delivered"] == 0 and sender.stats["retried"] > 0
            assert sender.waiting() > 2  # re-asks queued behind them
            assert max(ttfts) < 1.0 and took < 5.0, (ttfts, took)
            assert all(o.status is Status.OK and o.ttft_s is not None and o.ttft_s < 1.0 for o in outcomes)


@pytest.mark.parametrize("scaling", [True, False])
async def test_placement_auto_packs_when_autoscaling_is_on(scaling: bool, tmp_path: Path) -> None:
    """Two fast servers, four concurrent streams that fit on one: with autoscaling on,
    ``placement: auto`` packs them on one server (the other stays empty and can be given
    back); off, it spreads them."""
    prof = tmp_path / "cpu-tiny.json"
    BUILTIN_PROFILES["cpu-tiny"].save(prof)
    async with serve_engines(2, profile="cpu-tiny") as fleet:
        extra: dict[str, Any] = {"routing": {"default_tier": "fast"}, "models": {"profile": str(prof)}}
        if scaling:
            extra["autoscale"] = {"enabled": True, "mode": "advisory", "idle_s": 60}
        cfg = router_config(fleet.urls, policy="polyserve", tiers=TIERS, backend_tiers=["fast"], extra=extra)
        async with run_router(cfg) as router:
            outcomes: list[Outcome] = []
            router.services.tracker.add_listener(outcomes.append)
            client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="EMPTY", max_retries=0)
            try:
                await asyncio.gather(*(stream(client, i, 30) for i in range(4)))
            finally:
                await client.close()
    used = sorted(Counter(o.backend for o in outcomes).values())
    assert used == ([4] if scaling else [2, 2])
