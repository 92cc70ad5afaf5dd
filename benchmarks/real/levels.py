"""Router overhead against vLLM served directly, and the router's latency model against
vLLM's own inter-token latency, level by level (see :mod:`benchmarks.real.bench`)."""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.real.harness import config, router
from benchmarks.real.streams import Record, closed_loop, itl_between, vllm_itl
from slorouter import cli
from slorouter.models.latency import OnlineLatency
from slorouter.models.profile import StepProfile


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def overhead(url: str, levels: Sequence[int], repeat: int, tokens: int = 64) -> dict[str, Any]:
    """Direct vs through the router, alternated: TTFT and inter-chunk gap medians (ms)."""
    res: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=300)
    async with router(config([url], "round-robin")) as rt, aiohttp.ClientSession(timeout=timeout) as s:
        await closed_loop(s, url, {None: 2}, 8, requests=4)  # warm both paths
        await closed_loop(s, rt.url, {None: 2}, 8, requests=4)
        for c in levels:
            recs: dict[str, list[Record]] = {"direct": [], "router": []}
            for _ in range(repeat):
                for name, target in (("direct", url), ("router", rt.url)):
                    recs[name] += await closed_loop(s, target, {None: c}, tokens, requests=max(8, 2 * c))
            row: dict[str, Any] = {}
            for name, rs in recs.items():
                row[name] = {
                    "requests": len(rs),
                    "errors": sum(not r.ok for r in rs),
                    "ttft_p50_ms": 1e3 * _median([r.ttft_s for r in rs if r.ok]),
                    "itl_p50_ms": 1e3 * _median([g for r in rs for g in r.gaps_s]),
                }
            row["ttft_delta_ms"] = row["router"]["ttft_p50_ms"] - row["direct"]["ttft_p50_ms"]
            row["itl_delta_ms"] = row["router"]["itl_p50_ms"] - row["direct"]["itl_p50_ms"]
            res[str(c)] = row
    return res


async def profile_servers(urls: Sequence[str], out_dir: Path, levels: str = "1,4,8") -> list[Path]:
    """``slorouter profile`` on every server at once (so each is measured while the others
    are busy too, as they will be behind the router); one profile per server."""

    def one(i: int, url: str) -> Path:
        out = out_dir / f"profile-e{i}.json"
        args = [
            "profile",
            "--target",
            url,
            "--out",
            str(out),
            "--raw",
            str(out_dir / f"profile-e{i}-raw.json"),
        ]
        args += ["--concurrency", levels, "--output-tokens", "64"]  # max(8, 2 x level) requests each
        args += ["--prompt-tokens", "64", "--quiet"]
        if cli.main(args) != 0:
            raise RuntimeError(f"slorouter profile failed on {url}")
        return out

    return list(await asyncio.gather(*(asyncio.to_thread(one, i, u) for i, u in enumerate(urls))))


async def model_levels(
    urls: Sequence[str],
    profile: Path | None,
    state_file: Path | None,
    levels: Sequence[int] = (1, 4, 8),
    seconds: float = 10.0,
    tokens: int = 64,
    warmup_s: float = 4.0,
) -> dict[str, Any]:
    """Levels through the router (``least-request``: ``2 x level`` streams keep ``level`` on
    each server); then the model's predictions at each level's load, per server. First
    ``warmup_s`` of load straight to the servers, not measured: a server that has idled
    serves its first seconds of load slower (1.5-3x vLLM's own ITL at one stream here)."""
    rows: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=300)
    cfg = config(urls, "least-request", profile=profile, state_file=state_file)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        await asyncio.gather(
            *(closed_loop(s, u, {None: max(levels)}, tokens, seconds=warmup_s) for u in urls)
        )
    async with router(cfg) as rt, aiohttp.ClientSession(timeout=timeout) as s:
        for c in levels:
            before = [await vllm_itl(s, u) for u in urls]
            n0 = len(rt.outcomes)
            recs = await closed_loop(s, rt.url, {None: len(urls) * c}, tokens, seconds=seconds)
            after = [await vllm_itl(s, u) for u in urls]
            for i in range(len(urls)):
                b = f"e{i}"
                mine = [o for o in rt.outcomes[n0:] if o.backend == b]
                samples = [x for o in mine for x in o.step_samples]
                ttfts = [x for o in mine if (x := o.ttft_s) is not None]
                n = max(1, len(samples))
                rows.append(
                    {
                        "level": c,
                        "backend": b,
                        "errors": sum(not r.ok for r in recs),
                        "vllm_itl_ms": 1e3 * itl_between(before[i], after[i]),
                        "router_gap_ms": 1e3 * sum(x[0] for x in samples) / n,
                        "batch": sum(x[1] for x in samples) / n,
                        "kv_tokens": sum(x[2] for x in samples) / n,
                        "samples": len(samples),
                        "ttft_ms": 1e3 * statistics.fmean(ttfts) if ttfts else float("nan"),
                    }
                )
        lat = rt.services.tracker.latency
        assert isinstance(lat, OnlineLatency)
        describe = {f"e{i}": lat.describe(f"e{i}") for i in range(len(urls))}
        for row in rows:
            b, batch, kv = row["backend"], round(row["batch"]), round(row["kv_tokens"])
            mean = lat.linear(b).at(batch, kv) / describe[b]["ratio_q"]
            row["model_mean_ms"] = 1e3 * mean
            row["model_p90_ms"] = 1e3 * lat.step_time(b, batch, kv)
            row["support"] = lat.support(b, batch, kv)
            row["error_pct"] = 100 * (row["model_mean_ms"] / row["vllm_itl_ms"] - 1)
    return {"rows": rows, "models": describe}


def unsteady(levels: dict[str, Any], tolerance: float = 0.15) -> list[str]:
    """Why vLLM's *own* ITL over these levels is not a steady batching curve (empty: it
    is): per server, not rising with the level (5 % slack), or a level more than
    ``tolerance`` off the server's own least-squares line — the marks of a stall of the
    host (seconds-long slowdowns of one engine happen on this shared 2-core machine),
    against which no model of the engine can be judged."""
    out: list[str] = []
    for b in sorted({r["backend"] for r in levels["rows"]}):
        mine = sorted((r for r in levels["rows"] if r["backend"] == b), key=lambda r: r["level"])
        xs = [float(r["level"]) for r in mine]
        ys = [r["vllm_itl_ms"] for r in mine]
        if any(not math.isfinite(y) for y in ys):
            out.append(f"{b}: no ITL at some level")
            continue
        for (x0, y0), (x1, y1) in itertools.pairwise(zip(xs, ys, strict=True)):
            if y1 < 0.95 * y0:
                out.append(f"{b}: vLLM ITL fell from {y0:.1f} ms at {x0:.0f} to {y1:.1f} ms at {x1:.0f}")
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        for x, y in zip(xs, ys, strict=True):
            line = my + slope * (x - mx)
            if abs(y / line - 1) > tolerance:
                out.append(f"{b}: vLLM ITL {y:.1f} ms at {x:.0f}, {100 * (y / line - 1):+.0f} % off its line")
    return out


def profile_summary(path: Path) -> dict[str, Any]:
    prof = StepProfile.load(path)
    return {
        "step": asdict(prof.step),
        "mean_itl_ms": {str(p.concurrency): 1e3 * p.mean_itl_s for p in prof.points},
    }
