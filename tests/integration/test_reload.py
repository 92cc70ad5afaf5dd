"""Hot reload: ``POST /admin/reload`` and SIGHUP re-read the YAML. Valid: new requests
use it at once, in-flight requests finish on their backends, nothing is dropped (10
reloads under load, backends added and removed, policy switched). Invalid: the running
config stays and every error is returned and logged."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from slorouter.config import load_config
from slorouter.simengine.server import serve_engines
from slorouter.values import Outcome
from tests.faults.test_faults import poll
from tests.promtext import value
from tests.routerkit import DEFAULT_TIERS, run_router

TOKEN = "reload-admin-token"
ENV = "TEST_RELOAD_ADMIN"
CHAT = {"model": "sim-llama", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 12}


def raw_config(
    urls: list[str], names: list[str], policy: str = "round-robin", **extra: Any
) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 8080},
        "tiers": DEFAULT_TIERS,
        "backends": [{"name": n, "url": u, "tier": "standard"} for n, u in zip(names, urls, strict=True)],
        "routing": {"default_tier": "standard", "allow_anonymous": True},
        "policy": {"kind": policy},
        "admin": {"token_env": ENV},
        **extra,
    }


def write(path: Path, raw: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(raw))
    os.replace(tmp, path)


async def admin(url: str, path: str, method: str = "POST") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url + path, headers={"Authorization": f"Bearer {TOKEN}"}) as r,
    ):
        return r.status, await r.json()


async def test_ten_reloads_under_load_drop_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    async with serve_engines(3, profile="cpu-tiny", seed=5) as fleet:
        u = fleet.urls
        variants = [
            raw_config(u[:2], ["e0", "e1"]),
            raw_config(u, ["e0", "e1", "e2"], policy="least-request"),  # e2 added, policy switched
            raw_config(u[1:], ["e1", "e2"], policy="least-tokens"),  # e0 removed with streams in flight
            raw_config(u, ["e0", "e1", "e2"], retries={"max_attempts": 2}),
        ]
        cfg_file = tmp_path / "router.yaml"
        write(cfg_file, variants[0])
        async with run_router(load_config(cfg_file)) as router:
            outcomes: list[Outcome] = []
            router.services.tracker.add_listener(outcomes.append)
            stop = asyncio.Event()
            results: Counter[str] = Counter()

            async def worker(w: int) -> None:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
                    i = 0
                    while not stop.is_set():
                        i += 1
                        body = {**CHAT, "stream": (w + i) % 3 != 0, "max_tokens": 8 + (w * 7 + i) % 20}
                        async with s.post(router.url + "/v1/chat/completions", json=body) as r:
                            data = await r.read()
                            ok = r.status == 200 and (
                                not body["stream"] or data.endswith(b"data: [DONE]\n\n")
                            )
                            results["ok" if ok else f"bad {r.status} {data[-200:]!r}"] += 1

            workers = [asyncio.create_task(worker(w)) for w in range(8)]
            reports = []
            in_flight: list[int] = []
            removed_at: float | None = None
            for k in range(1, 11):
                await asyncio.sleep(0.35)
                v = variants[k % len(variants)]
                write(cfg_file, v)
                if [b["name"] for b in v["backends"]] == ["e1", "e2"]:
                    await poll(lambda: router.services.tracker.loads["e0"].running > 0, 5)
                    removed_at = router.services.clock.now()
                in_flight.append(router.services.tracker.in_flight())
                status, rep = await admin(router.url, "/admin/reload")
                assert status == 200 and rep["ok"], rep
                reports.append(rep)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
            await poll(router.services.tracker.all_zero, 5)
            status, backends = await admin(router.url, "/admin/backends", "GET")
    assert set(results) == {"ok"}, results  # nothing dropped, every stream complete
    assert sum(results.values()) == len(outcomes) > 50
    assert min(in_flight) > 0  # every reload happened with requests in flight
    assert any("backends removed: e0" in c for r in reports for c in r["changes"])
    assert any("policy round-robin -> least-request" in c for r in reports for c in r["changes"])
    assert removed_at is not None
    # e0's in-flight requests at removal finished fine; e2 got work after it was added
    assert Counter(o.backend for o in outcomes)["e2"] > 0
    assert [b["id"] for b in backends["backends"]] == [b["name"] for b in variants[10 % 4]["backends"]]
    print(
        f"\nRELOADS 10 under load: {len(outcomes)} requests, {dict(results)}, in flight at each: {in_flight}"
    )


async def test_invalid_reload_keeps_the_running_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    async with serve_engines(1, profile="cpu-tiny") as fleet:
        cfg_file = tmp_path / "router.yaml"
        write(cfg_file, raw_config(fleet.urls, ["e0"]))
        async with run_router(load_config(cfg_file)) as router:
            bad = raw_config(fleet.urls, ["e0"], policy="no-such-policy")
            bad["tiers"] = [{**DEFAULT_TIERS[0], "tpot_ms": -5}, *DEFAULT_TIERS[1:]]
            write(cfg_file, bad)
            with caplog.at_level(logging.ERROR, logger="slorouter"):
                status, rep = await admin(router.url, "/admin/reload")
            assert status == 400 and not rep["ok"]
            assert any(re.search(r"router\.yaml: tiers\[0\]\.tpot_ms: must be > 0", e) for e in rep["errors"])
            assert "tiers[0].tpot_ms" in caplog.text
            cfg_file.write_text("tiers: [unclosed")
            status, rep = await admin(router.url, "/admin/reload")
            assert status == 400 and rep["errors"]
            assert router.services.cfg.tiers[0].tpot_ms == 50  # the running config stayed
            async with (
                aiohttp.ClientSession() as s,
                s.post(router.url + "/v1/chat/completions", json=CHAT) as r,
            ):
                assert r.status == 200
            status, metrics = 0, ""
            async with aiohttp.ClientSession() as s, s.get(router.url + "/metrics") as r:
                metrics = await r.text()
            assert value(metrics, "slorouter_config_reloads_total", result="error") == 2
            assert value(metrics, "slorouter_config_reloads_total", result="ok") == 0


async def test_a_reload_warns_about_fields_applied_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    async with serve_engines(1, profile="cpu-tiny") as fleet:
        cfg_file = tmp_path / "router.yaml"
        write(cfg_file, raw_config(fleet.urls, ["e0"]))
        async with run_router(load_config(cfg_file)) as router:
            write(
                cfg_file,
                raw_config(
                    fleet.urls,
                    ["e0"],
                    server={"host": "127.0.0.1", "port": 8080, "max_body_bytes": 1000},
                    health={"interval_s": 7.0},
                ),
            )
            status, rep = await admin(router.url, "/admin/reload")
            assert status == 200 and rep["ok"], rep
            assert rep["warnings"] == ["server.max_body_bytes: changed, takes effect after a restart"]
            assert rep["changes"] == ["health settings changed"]
            assert router.services.cfg.health.interval_s == 7.0


async def test_sighup_reloads_a_running_slorouter_serve(tmp_path: Path) -> None:
    async with serve_engines(2, profile="cpu-tiny") as fleet:
        cfg_file = tmp_path / "router.yaml"
        write(cfg_file, raw_config(fleet.urls[:1], ["e0"]))
        env = {**os.environ, ENV: TOKEN}
        cmd = [sys.executable, "-m", "slorouter.cli", "serve", "--config", str(cfg_file), "--port", "0"]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            m = re.search(rb"http://127\.0\.0\.1:(\d+)", line)
            assert m, line
            url = f"http://127.0.0.1:{int(m.group(1))}"
            _, b = await admin(url, "/admin/backends", "GET")
            assert [x["id"] for x in b["backends"]] == ["e0"]
            write(cfg_file, raw_config(fleet.urls, ["e0", "e1"]))
            proc.send_signal(signal.SIGHUP)

            async def backend_ids() -> list[str]:
                return [x["id"] for x in (await admin(url, "/admin/backends", "GET"))[1]["backends"]]

            for _ in range(200):
                if await backend_ids() == ["e0", "e1"]:
                    break
                await asyncio.sleep(0.02)
            assert await backend_ids() == ["e0", "e1"]
            cfg_file.write_text("backends: 5\n")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.3)
            assert await backend_ids() == ["e0", "e1"]  # invalid: unchanged, still serving
            async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0
        assert b"config reload from" in err and b"refused" in err and b"backends" in err
