#!/usr/bin/env python3
"""Soak test: ``scripts/soak.py [--minutes 30] [--concurrency 64] [--engines 4]``.

Loopback only, bounded in time. Starts simulated engines (``slorouter sim``) and the
router (``slorouter serve``) as processes on 127.0.0.1, then runs a closed loop of
``--concurrency`` clients for ``--minutes``: streaming and non-streaming chat and
completions over three tiers, with random disconnects (clients that leave mid-stream or
right after sending). Every ``--interval-s`` (default 60 s) it prints the router's
resident memory (RSS) and open file descriptors, with the requests finished in that
interval. At the end it prints JSON: every sample, the growth of RSS and fds from the
first sample after ``--warmup-minutes`` to the last, whether both stayed under 5 %, and
whether the router had nothing left in flight. Exit status 1 if growth >= 5 %, any
request failed (a disconnect is not a failure), or requests were left in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console

from benchmarks.children import busy_series, router_port, start_router, stop_all, wait_listening
from benchmarks.ports import free_port_range

MSG = [{"role": "user", "content": "write a short note about reliable request routing"}]


def rss_and_fds(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+) kB", status)
    rss_mb = int(m.group(1)) / 1024 if m else float("nan")
    return rss_mb, len(os.listdir(f"/proc/{pid}/fd"))


async def one(s: aiohttp.ClientSession, url: str, rng: random.Random, stats: Counter[str]) -> None:
    tier = rng.choice(["interactive", "standard", "batch"])
    stream = rng.random() < 0.8
    chat = rng.random() < 0.7
    body: dict[str, Any] = {"model": "sim-llama", "max_tokens": rng.randint(4, 64), "stream": stream}
    body |= {"messages": MSG} if chat else {"prompt": "once upon a time, in a data center"}
    path = "/v1/chat/completions" if chat else "/v1/completions"
    leave = rng.random()
    try:
        if leave < 0.03:  # gone right after sending
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.005):
                    await s.post(url + path, json=body, headers={"x-slo-tier": tier})
            stats["left_early"] += 1
            return
        async with s.post(url + path, json=body, headers={"x-slo-tier": tier}) as r:
            if r.status != 200:
                await r.read()
                stats[f"http_{r.status}"] += 1
                return
            if stream and leave < 0.10:  # leaves mid-stream
                for _ in range(rng.randint(1, 5)):
                    await r.content.readany()
                r.close()
                stats["left_mid_stream"] += 1
                return
            data = await r.read()
            ok = data.endswith(b"data: [DONE]\n\n") if stream else b'"usage"' in data
            stats["ok" if ok else "incomplete"] += 1
    except (aiohttp.ClientError, TimeoutError) as e:
        stats[f"client_{type(e).__name__}"] += 1


async def load(url: str, concurrency: int, until: float, stats: Counter[str], seed: int) -> None:
    async def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            while time.monotonic() < until:
                await one(s, url, rng, stats)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))


async def metrics_inflight(url: str) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    return busy_series(text)


async def soak(args: argparse.Namespace, router_pid: int, url: str, console: Console) -> dict[str, Any]:
    stats: Counter[str] = Counter()
    t0 = time.monotonic()
    until = t0 + args.minutes * 60
    loader = asyncio.create_task(load(url, args.concurrency, until, stats, args.seed))
    samples: list[dict[str, Any]] = []
    rss, fds = rss_and_fds(router_pid)
    console.print(
        f"start: router RSS {rss:.1f} MB, {fds} fds; {args.concurrency} clients for {args.minutes:g} min"
    )
    head = ("minute", 7), ("RSS MB", 8), ("fds", 6), ("finished", 9), ("ok", 8), ("left", 6), ("errors", 7)
    console.print(" ".join(f"{h:>{w}}" for h, w in (*head, ("req/s", 7))))
    last_total = 0
    k = 0
    while True:
        k += 1
        nxt = t0 + k * args.interval_s
        if nxt > until + 1.0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(loader), max(0.0, nxt - time.monotonic()))
        rss, fds = rss_and_fds(router_pid)
        total = sum(stats.values())
        errors = sum(v for key, v in stats.items() if key.startswith(("http_", "client_", "incomplete")))
        left = stats["left_mid_stream"] + stats["left_early"]
        row = {
            "minute": round((time.monotonic() - t0) / 60, 2),
            "rss_mb": round(rss, 1),
            "fds": fds,
            "finished": total - last_total,
            "ok": stats["ok"],
            "left": left,
            "errors": errors,
            "rps": round((total - last_total) / args.interval_s, 1),
        }
        last_total = total
        samples.append(row)
        console.print(
            f"{row['minute']:>7} {row['rss_mb']:>8} {row['fds']:>6} {row['finished']:>9} {row['ok']:>8} "
            f"{row['left']:>6} {row['errors']:>7} {row['rps']:>7}"
        )
    await loader
    await asyncio.sleep(1.0)
    for _ in range(100):  # up to 10 s for the last requests to end
        busy = await metrics_inflight(url)
        if not busy:
            break
        await asyncio.sleep(0.1)
    rss_end, fds_end = rss_and_fds(router_pid)
    errors_total = sum(v for key, v in stats.items() if key.startswith(("http_", "client_", "incomplete")))
    warm = [s for s in samples if s["minute"] >= args.warmup_minutes] or samples[-1:]
    base, last = warm[0], warm[-1]
    rss_growth = (last["rss_mb"] - base["rss_mb"]) / base["rss_mb"]
    fd_growth = (last["fds"] - base["fds"]) / max(1, base["fds"])
    return {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "engines": args.engines,
        "requests": dict(stats),
        "samples": samples,
        "warmup_minutes": args.warmup_minutes,
        "rss_mb_after_warmup": base["rss_mb"],
        "rss_mb_last": last["rss_mb"],
        "rss_growth_pct": round(100 * rss_growth, 2),
        "fds_after_warmup": base["fds"],
        "fds_last": last["fds"],
        "fd_growth_pct": round(100 * fd_growth, 2),
        "after_idle": {"rss_mb": round(rss_end, 1), "fds": fds_end},
        "left_in_flight": busy,
        "errors": errors_total,
        "pass": rss_growth < 0.05 and fd_growth < 0.05 and not busy and errors_total == 0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    ap.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default 64)")
    ap.add_argument("--engines", type=int, default=4, help="simulated engines (default 4)")
    ap.add_argument("--profile", default="h100-8b", help="simulated engine profile (default h100-8b)")
    ap.add_argument("--interval-s", type=float, default=60.0, help="seconds between samples (default 60)")
    ap.add_argument("--warmup-minutes", type=float, default=2.0, help="growth is measured after (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1 or args.engines < 1 or args.interval_s <= 0:
        ap.error("--minutes, --interval-s must be > 0; --concurrency, --engines >= 1")
    console = Console(stderr=True)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="slorouter-soak-") as d:
        try:
            base = free_port_range(args.engines)
            cmd = [sys.executable, "-m", "slorouter.cli", "sim", "--engines", str(args.engines)]
            cmd += ["--base-port", str(base), "--profile", args.profile, "--seed", str(args.seed)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            cfg = {
                "server": {"host": "127.0.0.1"},
                "tiers": [
                    {"name": "interactive", "class": "latency", "ttft_ms": 1000, "tpot_ms": 50},
                    {"name": "standard", "class": "latency", "ttft_ms": 5000, "tpot_ms": 150},
                    {"name": "batch", "class": "best_effort"},
                ],
                "backends": [
                    {"name": f"e{i}", "url": f"http://127.0.0.1:{base + i}", "tier": "standard"}
                    for i in range(args.engines)
                ],
                "routing": {"default_tier": "standard", "allow_anonymous": True},
                "policy": {"kind": "least-request"},
            }
            (Path(d) / "router.yaml").write_text(yaml.safe_dump(cfg))
            router = start_router(Path(d) / "router.yaml", log_level="warning", stderr=subprocess.DEVNULL)
            procs.append(router)
            try:
                url = f"http://127.0.0.1:{router_port(router)}"
                for port in range(base, base + args.engines):  # wait for the engines
                    wait_listening(port, procs[0])
            except (RuntimeError, TimeoutError) as e:
                console.print(str(e))
                return 2
            report = asyncio.run(soak(args, router.pid, url, console))
        finally:
            stop_all(procs, grace_s=15.0)
    print(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
