"""Autoscaling with ``slorouter serve --workers 2``: one logical router, one scaler.

Real processes, real sockets: simulated engines in this test's loop, the router as a
subprocess (two workers on one port, shared memory between them), the real ``openai``
client on a fresh connection per request (so the kernel spreads them over both workers).

* A load step through the port with ``autoscale`` on in advisory mode: exactly one worker
  (the leader, ``w0``) decides — every decision logged carries its id prefix, the other
  worker answers ``GET /admin/autoscale`` with the leader's published state and no
  decisions of its own —, and the leader's scaler counts the arrivals of **both** workers
  (its finished count is every request, placed by either worker; the rate it sizes for is
  the whole offered rate, and the desired count is what that rate implies).
* A backend registered at one worker is in both workers' sets and gets traffic from both;
  removed at one worker, it drains and leaves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from slorouter.simengine.server import serve_engines
from tests.workerskit import ADMIN_ENV, chat, get, serve_workers, until

ADMIN = "workers-autoscale-admin"
OFFERED = 10.0  # requests per second through the port
LOAD_S = 6.0
TOKENS = 24
TARGET = 0.85


def _config(urls: list[str], path: Path, autoscale: bool) -> None:
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8080, "shutdown_grace_s": 30},
        "tiers": [{"name": "chat", "class": "latency", "ttft_ms": 10_000, "tpot_ms": 50}],
        "backends": [{"name": f"e{i}", "url": u, "tier": "chat"} for i, u in enumerate(urls)],
        "routing": {"default_tier": "chat", "allow_anonymous": True},
        "policy": {"kind": "least-request"},
        "admin": {"token_env": ADMIN_ENV},
    }
    if autoscale:
        raw["autoscale"] = {
            "enabled": True,
            "mode": "advisory",
            "interval_s": 0.3,
            "provisioning_delay_s": 0,
            "rate_half_life_s": 1.0,
            "trend_half_life_s": 2.0,
            "scale_out_cooldown_s": 0.5,
            "target_utilization": TARGET,
            "scale_in_utilization": 0.5,
            "idle_s": 1.0,  # an empty server would be given back after 1 s: a decision to see
            "scale_in_cooldown_s": 1.0,
            "max_backends": 32,
        }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


async def _json(url: str, path: str) -> Any:
    return json.loads((await get(url, path, ADMIN))[1])


async def _lines(proc: asyncio.subprocess.Process, into: list[str]) -> None:
    """Keep reading the router's output (the pipe must not fill up)."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        into.append(line.decode(errors="replace"))


async def _both_answer(url: str) -> None:
    seen: set[int] = set()

    async def both() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            seen.add((await _json(url, "/health"))["worker"])
        return seen == {0, 1}

    await until(both, 20, "both workers to answer")


@pytest.mark.timeout(120)
async def test_the_leader_alone_scales_on_both_workers_arrivals(tmp_path: Path) -> None:
    async with serve_engines(2, profile="cpu-tiny", seed=5) as fleet:
        cfg = tmp_path / "router.yaml"
        _config(fleet.urls, cfg, autoscale=True)
        async with serve_workers(cfg, ADMIN) as (proc, url):
            out: list[str] = []
            reader = asyncio.create_task(_lines(proc, out))
            await _both_answer(url)

            async def leader_view() -> Any:
                got = await _json(url, "/admin/autoscale")
                return got if got.get("leader") else None

            # the load step: OFFERED req/s for LOAD_S, each request on its own connection
            n = int(OFFERED * LOAD_S)
            tasks = []
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i / OFFERED - loop.time()))  # the arrival schedule
                tasks.append(asyncio.create_task(chat(url, TOKENS, stream=False)))
            # at the end of the step: what the leader sizes for
            during = await until(leader_view, 10, "the leader's view")
            assert await asyncio.wait_for(asyncio.gather(*tasks), 60) == [TOKENS] * n

            # every request, placed by either worker, reached the leader's scaler
            async def all_counted() -> Any:
                v = await leader_view()
                return v if v is not None and v["tiers"]["chat"]["finished"] == n else None

            after = await until(all_counted, 15, f"the leader to count all {n} requests")
            by = {h: c.get("chat", 0) for h, c in after["finished_by_process"].items()}
            assert set(by) == {"w0", "w1"}, by
            assert sum(by.values()) == n and min(by.values()) > 0, by  # both workers served

            # the rate it sized for is the whole offered rate (one worker's would be ~half)
            chat_t = during["tiers"]["chat"]
            assert chat_t["rate_rps"] >= 0.7 * OFFERED, chat_t
            assert chat_t["sizing_rate_rps"] >= 0.7 * OFFERED, chat_t
            implied = math.ceil(chat_t["sizing_rate_rps"] * chat_t["cost_server_s"] / TARGET)
            assert chat_t["need"] == max(1, implied), chat_t

            # the other worker runs no scaler: it shows the leader's published state
            async def follower() -> Any:
                got = await _json(url, "/admin/autoscale")
                return got if got.get("leader") is False else None

            f = await until(follower, 20, "the other worker to answer")
            assert f["leader_holder"] == "w0" and f["decisions"] == [], f
            assert f["tiers"]["chat"]["desired"] >= 1, f

            # exactly one process emitted decisions: every logged decision has its id prefix
            async def logged() -> bool:
                await asyncio.sleep(0.05)  # a poll interval: let the reader take in the output
                return any("advisory: would scale" in x for x in out)

            await until(logged, 10, "a decision in the log")
            ids = re.findall(r"advisory: would scale .* \[([0-9a-f]{12})-\d+\]", "".join(out))
            assert ids and len(set(ids)) == 1, ids
            lead = await until(leader_view, 10, "the leader's view")  # its decisions: the logged ones
            assert lead["decisions"] and all(d["decision_id"].startswith(ids[0]) for d in lead["decisions"])
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@pytest.mark.timeout(120)
async def test_a_backend_registered_at_one_worker_gets_traffic_from_both(tmp_path: Path) -> None:
    async with serve_engines(3, profile="cpu-tiny", seed=6) as fleet:
        cfg = tmp_path / "router.yaml"
        _config(fleet.urls[:2], cfg, autoscale=False)
        async with serve_workers(cfg, ADMIN) as (_proc, url):
            await _both_answer(url)
            conn = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=conn) as s:
                body = {"name": "new", "url": fleet.urls[2], "tier": "chat"}
                async with s.post(
                    url + "/admin/backends", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
                ) as r:
                    assert r.status == 201, await r.text()

            # in both workers' sets
            has: dict[int, bool] = {}

            async def everywhere() -> bool:
                b = await _json(url, "/admin/backends")
                has[b["worker"]] = any(x["id"] == "new" for x in b["backends"])
                return len(has) == 2 and all(has.values())

            await until(everywhere, 20, "both workers to list the registered backend")

            # traffic from both: streams in flight, each worker's own requests on it
            streams = [asyncio.create_task(chat(url, 120, stream=True)) for _ in range(18)]
            placed: dict[int, int] = {}

            async def from_both() -> bool:
                b = await _json(url, "/admin/backends")
                new = next(x for x in b["backends"] if x["id"] == "new")
                placed[b["worker"]] = max(placed.get(b["worker"], 0), new["inflight"]["own_requests"])
                return len(placed) == 2 and all(placed.values())

            await until(from_both, 30, "both workers to place requests on the registered backend")

            # removed at one worker while both have streams on it: it drains everywhere (every
            # stream completes), then leaves the set
            async def remove() -> tuple[int, Any]:
                conn = aiohttp.TCPConnector(force_close=True)
                hdr = {"Authorization": f"Bearer {ADMIN}"}
                async with (
                    aiohttp.ClientSession(connector=conn) as s,
                    s.delete(url + "/admin/backends/new?wait_s=60", headers=hdr) as r,
                ):
                    return r.status, await r.json()

            removal = asyncio.create_task(remove())
            assert await asyncio.wait_for(asyncio.gather(*streams), 60) == [120] * 18
            status, body = await asyncio.wait_for(removal, 60)
            assert status == 200 and body["state"] == "removed", body
            gone: dict[int, bool] = {}

            async def gone_everywhere() -> bool:
                b = await _json(url, "/admin/backends")
                gone[b["worker"]] = all(x["id"] != "new" for x in b["backends"])
                return len(gone) == 2 and all(gone.values())

            await until(gone_everywhere, 20, "both workers to drop the removed backend")
