"""Helpers for the replica tests: router replicas sharing their load picture through a
real ``redis-server`` (tests/redisserver.py), in-process (``run_router``) or as a
``slorouter serve`` subprocess that a test can SIGKILL; and the views to compare.

A replica's **own** count of a backend is read from its tracker's per-request records
(``Tracker.residents``), not from the counters the sync arithmetic keeps: the truth the
views are checked against is independent of the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from loadgen import results
from loadgen.runner import run_workload
from loadgen.workload import Workload, parse_workload
from slorouter.config.model import RouterConfig
from slorouter.state.sync import LoadSync
from slorouter.state.tracker import Tracker
from tests.promtext import value
from tests.redisserver import die_with_parent, free_port
from tests.routerkit import RouterHandle, raw_router_config, router_config

TICK_MS = 50.0
TTL_MS = 300.0


def sync_section(
    redis_url: str | None, *, tick_ms: float = TICK_MS, ttl_ms: float = TTL_MS
) -> dict[str, Any]:
    if redis_url is None:
        return {"kind": "none"}
    return {"kind": "redis", "url": redis_url, "tick_ms": tick_ms, "ttl_ms": ttl_ms, "prefix": "test"}


def replica_config(
    urls: Sequence[str], redis_url: str | None, *, extra: Mapping[str, Any] | None = None, **kw: Any
) -> RouterConfig:
    """``router_config`` with ``state.sync`` pointing at ``redis_url`` (None: no sync)."""
    return router_config(urls, extra={**(extra or {}), "state": {"sync": sync_section(redis_url)}}, **kw)


def raw_replica_config(
    urls: Sequence[str], redis_url: str | None, *, extra: Mapping[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """The same as YAML-shaped data (for a ``slorouter serve`` subprocess)."""
    return raw_router_config(urls, extra={**(extra or {}), "state": {"sync": sync_section(redis_url)}}, **kw)


def tracker(r: RouterHandle) -> Tracker:
    return r.services.tracker


def sync(r: RouterHandle) -> LoadSync:
    s = tracker(r).sync
    assert s is not None, "this router does not share its load picture"
    return s


def own(t: Tracker, backend: str) -> int:
    """Requests this replica itself has resident on ``backend`` (its per-request records)."""
    return len(t.residents(backend))


def remote(r: RouterHandle, backend: str) -> int:
    """Requests on ``backend`` that this replica's view holds for the others."""
    s = sync(r)
    return s.shared(backend)[0] - s.own(backend)[0]


async def until(cond: Callable[[], bool | Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``cond`` every 5 ms until true; the seconds it took. Fails after ``within``."""
    t0 = time.monotonic()
    while True:
        got = cond()
        if not isinstance(got, bool):
            got = await got
        if got:
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not within {within:.3f} s: {what}")
        await asyncio.sleep(0.005)


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


async def metric(url: str, name: str, **labels: str) -> float:
    return value(await scrape(url), name, **labels)


@dataclass
class Subprocess:
    """A ``slorouter serve`` replica in its own process."""

    proc: asyncio.subprocess.Process
    url: str

    def kill(self) -> None:
        """SIGKILL: no cleanup runs; its row stays in the store until the TTL."""
        self.proc.send_signal(signal.SIGKILL)


@contextlib.asynccontextmanager
async def serve_subprocess(cfg: dict[str, Any], tmp: Path, port: int = 0) -> AsyncIterator[Subprocess]:
    """``slorouter serve --config <cfg as YAML> --port PORT`` (0: any free one) in a child
    process; its URL read from the line it prints when listening. Killed (by PID) on exit
    if still running."""
    path = tmp / f"replica-{os.getpid()}-{id(cfg)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "slorouter.cli", "serve", "--config", str(path), "--port", str(port),
        "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 30
        while not url:
            line = (
                await asyncio.wait_for(proc.stdout.readline(), max(0.1, deadline - time.monotonic()))
            ).decode()
            assert line, f"slorouter serve exited with {await proc.wait()} before listening"
            if line.startswith("slorouter listening on "):
                url = line.split()[-1].replace("0.0.0.0", "127.0.0.1")
        yield Subprocess(proc, url)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def workload(
    tiers: list[dict[str, Any]],
    mix: list[dict[str, Any]],
    *,
    rate: float,
    duration_s: float,
    seed: int,
    process: str = "poisson",
    burstiness: float = 1.0,
) -> Workload:
    """A load-generator workload (tiers sent in the ``x-slo-tier`` header)."""
    return parse_workload(
        {
            "name": f"replicas-{seed}",
            "tiers": tiers,
            "tier_by": "header",
            "model": "sim-llama",
            "endpoint": "/v1/completions",
            "ignore_eos": True,
            "seed": seed,
            "duration_s": duration_s,
            "arrival": {"process": process, "rate": rate}
            | ({"burstiness": burstiness} if process == "gamma" else {}),
            "mix": mix,
            "request_timeout_s": 60,
            "drain_s": 30,
        },
        f"<replicas-{seed}>",
        Path("."),
    )


async def run_spread(loads: Sequence[tuple[Workload, str]]) -> list[dict[str, Any]]:
    """Run every ``(workload, target)`` at once; each run's results document."""
    runs = await asyncio.gather(*(run_workload(w, target) for w, target in loads))
    return [results.from_run(r) for r in runs]


def attainment(docs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per-tier attainment of several runs taken together (met / arrivals)."""
    met: dict[str, int] = {}
    arrivals: dict[str, int] = {}
    for d in docs:
        for name, t in d["tiers"].items():
            met[name] = met.get(name, 0) + t["met"]
            arrivals[name] = arrivals.get(name, 0) + t["arrivals"]
    return {n: met[n] / arrivals[n] for n in arrivals if arrivals[n]}


def free_ports(n: int) -> int:
    """A first port of ``n`` consecutive free ones on 127.0.0.1 (free when probed)."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


@contextlib.asynccontextmanager
async def sim_subprocess(n: int, profile: str, seed: int = 0) -> AsyncIterator[list[str]]:
    """``slorouter sim --engines n`` in a child process (so the engines' steps keep their
    time whatever the routers in this process do); their URLs. Stopped by PID."""
    base = free_ports(n)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "slorouter.cli", "sim", "--engines", str(n), "--base-port", str(base),
        "--profile", profile, "--seed", str(seed),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent,
    )  # fmt: skip
    urls = [f"http://127.0.0.1:{base + i}" for i in range(n)]
    try:
        async with aiohttp.ClientSession() as s:
            for url in urls:

                async def healthy(url: str = url) -> bool:
                    assert proc.returncode is None, f"slorouter sim exited with {proc.returncode}"
                    try:
                        async with s.get(url + "/health") as r:
                            return r.status == 200
                    except aiohttp.ClientConnectionError:
                        return False

                await until(healthy, 30, f"the simulated engine at {url}")
        yield urls
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
        await proc.wait()
