#!/usr/bin/env python3
"""How accurately do simulated engines keep their step clock under load?

Starts N simulated engines (default 16) in this process, drives them for a bounded time
with streaming requests from a separate client process (raw HTTP/1.1, keep-alive, so the
load costs this process as little as possible), and compares every step's actual end
(when its tokens were written) with its modelled end. Prints JSON:

* ``lateness_ms``: actual − planned step end (mean, p50, p90, p99, max) over all steps;
* ``duration_ratio``: actual / modelled duration of back-to-back steps (mean, p50, p99);
* ``throughput_ratio``: Σ modelled durations of busy periods / their actual wall time;
* tokens delivered, steps, resyncs (the clock fell > 250 ms behind), and this process's
  CPU per token.

Usage: ``scripts/bench_sim_drift.py [--engines 16] [--levels 2,8,16] [--duration 8]
[--profile h100-8b]`` (one result per load level, in one run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slorouter.simengine.server import SimFleet


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _summary(xs: list[float], scale: float = 1.0) -> dict[str, float]:
    if not xs:
        return {}
    return {
        "mean": round(statistics.fmean(xs) * scale, 4),
        "p50": round(_pct(xs, 0.50) * scale, 4),
        "p90": round(_pct(xs, 0.90) * scale, 4),
        "p99": round(_pct(xs, 0.99) * scale, 4),
        "max": round(max(xs) * scale, 4),
    }


# ---- client (child process) -----------------------------------------------------------------
async def _worker(host: str, port: int, wid: int, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.monotonic() < deadline:
            n_out = 64 + (wid * 37 + i * 101) % 192
            body = json.dumps(
                {
                    "model": "sim-llama",
                    "prompt": [10 + (wid + i + k) % 4000 for k in range(100 + (i * 53) % 400)],
                    "max_tokens": n_out,
                    "ignore_eos": True,
                    "stream": True,
                }
            ).encode()
            i += 1
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:200].decode(errors="replace"))
            tail = b""
            while not tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):  # read in blocks, count events
                data = await reader.read(1 << 16)
                if not data:
                    raise RuntimeError("connection closed mid-stream")
                counts[0] += data.count(b"data: {")
                tail = (tail + data)[-64:]
            counts[1] += 1
    finally:
        writer.close()


async def _client(urls: list[str], concurrency: int, duration: float) -> None:
    deadline = time.monotonic() + duration
    counts = [0, 0]  # token chunks, requests
    tasks = []
    for u in urls:
        host, port = u.removeprefix("http://").split(":")
        tasks += [_worker(host, int(port), w, deadline, counts) for w in range(concurrency)]
    await asyncio.gather(*tasks)
    print(json.dumps({"token_chunks": counts[0], "requests": counts[1]}))


# ---- engines (this process) -----------------------------------------------------------------
async def _level(fleet: SimFleet, concurrency: int, duration: float) -> dict[str, object]:
    for eng in fleet.engines:
        assert eng.drift is not None
        eng.drift.clear()
        eng.resyncs = 0
    cpu0, wall0 = time.process_time(), time.monotonic()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.sim_drift",
        "--client",
        "--urls",
        ",".join(fleet.urls),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(), timeout=duration + 60)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    client = json.loads(out.decode().strip().splitlines()[-1])
    late: list[float] = []
    ratio: list[float] = []
    busy_model = busy_wall = 0.0
    steps = resyncs = 0
    for eng in fleet.engines:
        d = eng.drift or []
        steps += len(d)
        resyncs += eng.resyncs
        for k, (end, actual, dur) in enumerate(d):
            late.append(actual - end)
            if k and abs((end - dur) - d[k - 1][0]) < 1e-9:  # started at the previous planned end
                ratio.append((actual - d[k - 1][1]) / dur)
                busy_model += dur
                busy_wall += actual - d[k - 1][1]
    return {
        "concurrency_per_engine": concurrency,
        "streams": concurrency * len(fleet.engines),
        "steps": steps,
        "resyncs": resyncs,
        "lateness_ms": _summary(late, 1e3),
        "duration_ratio": _summary(ratio),
        "throughput_ratio": round(busy_model / busy_wall, 4) if busy_wall else None,
        "tokens": client["token_chunks"],
        "requests": client["requests"],
        "tokens_per_s": round(client["token_chunks"] / wall, 1),
        "engine_process_cpu_s": round(cpu, 2),
        "engine_process_cpu_share": round(cpu / wall, 3),
        "engine_cpu_us_per_token": round(cpu / max(1, client["token_chunks"]) * 1e6, 2),
    }


def _model_step_cost(steps: int = 200_000, batch: int = 128) -> dict[str, float]:
    """The pure engine model (no HTTP): µs per step with ~`batch` running requests and
    continuous arrivals/finishes, as the offline fleet simulator drives it."""
    import random

    from slorouter.engine.model import EngineModel
    from slorouter.engine.profiles import load_profile

    eng = EngineModel(load_profile("h100-8b"), keep_history=True)
    rng = random.Random(1)
    now, rid = 0.0, 0
    t0 = time.perf_counter()
    for _ in range(steps):
        while eng.num_running + eng.num_waiting < batch:
            eng.submit(rid, rng.randint(50, 2000), rng.randint(10, 500), now)
            rid += 1
        now = eng.plan(now) or now
        eng.step()
    dt = time.perf_counter() - t0
    return {"steps": steps, "batch": batch, "requests": rid, "us_per_step": round(dt / steps * 1e6, 2)}


async def _bench(args: argparse.Namespace) -> dict[str, object]:
    from slorouter.simengine.server import serve_engines

    levels = [int(x) for x in args.levels.split(",")]
    async with serve_engines(args.engines, profile=args.profile, record_drift=True) as fleet:
        results = [await _level(fleet, c, args.duration) for c in levels]
    return {
        "engines": args.engines,
        "profile": args.profile,
        "duration_s_per_level": args.duration,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "model_only": _model_step_cost(),
        "levels": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", type=int, default=16)
    p.add_argument("--levels", default="2,8,16", help="streams per engine, one load level each")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of load per level")
    p.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--profile", default="h100-8b")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--urls", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        asyncio.run(_client(args.urls.split(","), args.concurrency, args.duration))
        return 0
    try:
        import uvloop

        result = uvloop.run(_bench(args))
    except ImportError:
        result = asyncio.run(_bench(args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
