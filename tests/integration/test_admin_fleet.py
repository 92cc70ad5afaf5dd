"""Registering and removing backends through the admin API, on a real router in front of
simulated engines: a registered backend gets traffic at once; a removed one drains (its
stream finishes, nothing new reaches it) and is then reported removable; bad input gets
a clear 4xx; a config reload keeps what was registered."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from slorouter.config import load_config
from slorouter.sim.server import serve_engines, start_engine
from slorouter.values import Outcome, Status
from tests.faults.test_faults import poll
from tests.integration.test_reload import CHAT, ENV, TOKEN, raw_config, write
from tests.routerkit import router_config, run_router

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def call(
    s: aiohttp.ClientSession, method: str, url: str, body: Any = None, auth: bool = True
) -> tuple[int, Any]:
    async with s.request(method, url, json=body, headers=AUTH if auth else {}) as r:
        return r.status, await r.json()


async def test_a_registered_backend_gets_traffic_and_bad_registrations_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    async with serve_engines(1, profile="cpu-tiny") as fleet:
        extra = await start_engine("cpu-tiny")
        try:
            cfg = router_config(fleet.urls, backend_tiers=["standard"], extra={"admin": {"token_env": ENV}})
            async with run_router(cfg) as router, aiohttp.ClientSession() as s:
                outcomes: list[Outcome] = []
                router.services.tracker.add_listener(outcomes.append)
                url = router.url + "/admin/backends"
                good = {"name": "x1", "url": extra.url, "tier": "standard"}
                assert (await call(s, "POST", url, good, auth=False))[0] == 401
                for body, status, text in [
                    ({"url": extra.url, "tier": "standard"}, 400, "name: required"),
                    ({**good, "url": "ftp://h"}, 400, "url: must be an http:// or https:// URL"),
                    ({**good, "tier": "gold"}, 400, "unknown tier 'gold'"),
                    ({**good, "colour": "red"}, 400, "colour: unknown key"),
                    ({**good, "engine": "sglang"}, 400, "engine: must be one of vllm, tgi, openai"),
                    (
                        {**good, "api_key_env": "TEST_FLEET_UNSET"},
                        400,
                        "environment variable TEST_FLEET_UNSET is not set",
                    ),
                    ({**good, "name": "e0"}, 409, "backend id 'e0' is taken"),
                    ({**good, "url": fleet.urls[0]}, 409, "is already backend 'e0'"),
                ]:
                    st, got = await call(s, "POST", url, body)
                    assert st == status and text in got["error"]["message"], (body, got)
                st, got = await call(s, "POST", url, good)
                assert st == 201 and got["status"] == "created" and got["backend"]["tier"] == "standard"
                assert (await call(s, "POST", url, good))[:1] == (200,)  # the same again: unchanged
                assert (await call(s, "POST", url, {**good, "url": "http://127.0.0.1:9"}))[0] == 409
                for _ in range(8):
                    async with s.post(router.url + "/v1/chat/completions", json=CHAT) as r:
                        assert r.status == 200
                        await r.read()
                await poll(lambda: len(outcomes) == 8, 5)
                assert Counter(o.backend for o in outcomes) == {"e0": 4, "x1": 4}  # round-robin over both
                st, listing = await call(s, "GET", url)
                assert [b["id"] for b in listing["backends"]] == ["e0", "x1"]
        finally:
            await extra.stop()


async def test_removal_drains_then_reports_removable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    async with serve_engines(2, profile="cpu-tiny") as fleet:
        cfg = router_config(fleet.urls, backend_tiers=["standard"], extra={"admin": {"token_env": ENV}})
        async with run_router(cfg) as router, aiohttp.ClientSession() as s:
            outcomes: list[Outcome] = []
            router.services.tracker.add_listener(outcomes.append)
            tracker = router.services.tracker
            await call(s, "POST", router.url + "/admin/drain", {"backend": "e0"})
            long = {**CHAT, "stream": True, "max_tokens": 60, "ignore_eos": True}  # ~1.3 s on e1
            async with s.post(router.url + "/v1/chat/completions", json=long) as stream:
                assert stream.status == 200
                await stream.content.readline()  # it is streaming (on e1: e0 is drained)
                assert tracker.loads["e1"].running == 1
                await call(s, "POST", router.url + "/admin/undrain", {"backend": "e0"})
                st, got = await call(s, "DELETE", router.url + "/admin/backends/e1")
                assert st == 202 and got == {
                    "backend": "e1",
                    "state": "draining",
                    "removable": False,
                    "inflight": 1,
                }
                st, listing = await call(s, "GET", router.url + "/admin/backends")
                assert {b["id"]: b["removing"] for b in listing["backends"]} == {"e0": False, "e1": True}
                for _ in range(4):  # nothing new reaches e1
                    async with s.post(router.url + "/v1/chat/completions", json=CHAT) as r:
                        assert r.status == 200
                        await r.read()
                waiter = asyncio.create_task(call(s, "DELETE", router.url + "/admin/backends/e1?wait_s=10"))
                data = await stream.read()
            assert data.endswith(b"data: [DONE]\n\n")  # the in-flight stream finished whole
            st, got = await waiter
            assert st == 200 and got == {"backend": "e1", "state": "removed", "removable": True}
            await poll(lambda: len(outcomes) == 5, 5)
            assert [o.backend for o in outcomes if o.status is Status.OK].count("e1") == 1
            st, listing = await call(s, "GET", router.url + "/admin/backends")
            assert [b["id"] for b in listing["backends"]] == ["e0"]
            assert listing["removed"] == [
                {"id": "e1", "url": fleet.urls[1], "tier": "standard", "by": "admin", "removable": True}
            ]
            assert (await call(s, "DELETE", router.url + "/admin/backends/e1"))[0] == 404
            assert (await call(s, "DELETE", router.url + "/admin/backends/e0?wait_s=x"))[0] == 400
            st, got = await call(s, "DELETE", router.url + "/admin/backends/e0")  # idle: at once
            assert st == 200 and got["state"] == "removed"
            async with s.post(router.url + "/v1/chat/completions", json=CHAT) as r:
                assert r.status == 503  # no backend left


async def test_a_reload_keeps_registered_backends_and_removed_ones_stay_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    async with serve_engines(3, profile="cpu-tiny") as fleet:
        u = fleet.urls
        cfg_file = tmp_path / "router.yaml"
        write(cfg_file, raw_config(u[:2], ["e0", "e1"]))
        async with run_router(load_config(cfg_file)) as router, aiohttp.ClientSession() as s:
            st, _ = await call(
                s, "POST", router.url + "/admin/backends", {"name": "x", "url": u[2], "tier": "batch"}
            )
            assert st == 201
            assert (await call(s, "DELETE", router.url + "/admin/backends/e1"))[1]["state"] == "removed"
            write(cfg_file, raw_config(u[:2], ["e0", "e1"], retries={"max_attempts": 2}))
            st, rep = await call(s, "POST", router.url + "/admin/reload")
            assert st == 200 and rep["ok"]
            assert "backend e1: in the file but removed at run time; register it to use it" in rep["warnings"]
            ids = {b.id: b.tier for b in router.services.tracker.backends.backends}
            assert ids == {"e0": "standard", "x": "batch"}


async def test_a_backend_that_needs_an_api_key_is_registered_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    monkeypatch.setenv("TEST_FLEET_ENGINE_KEY", "engine-key")
    async with serve_engines(1, profile="cpu-tiny") as fleet:
        keyed = await start_engine("cpu-tiny", api_key="engine-key")
        try:
            cfg = router_config(fleet.urls, backend_tiers=["standard"], extra={"admin": {"token_env": ENV}})
            async with run_router(cfg) as router, aiohttp.ClientSession() as s:
                outcomes: list[Outcome] = []
                router.services.tracker.add_listener(outcomes.append)
                body = {
                    "name": "k1",
                    "url": keyed.url,
                    "tier": "standard",
                    "api_key_env": "TEST_FLEET_ENGINE_KEY",
                }
                assert (await call(s, "POST", router.url + "/admin/backends", body))[0] == 201
                for _ in range(4):
                    async with s.post(router.url + "/v1/chat/completions", json=CHAT) as r:
                        assert r.status == 200
                        await r.read()
                await poll(lambda: len(outcomes) == 4, 5)
                assert Counter(o.backend for o in outcomes) == {"e0": 2, "k1": 2}
        finally:
            await keyed.stop()
