#!/usr/bin/env python3
"""The router in front of real vLLM servers: router overhead, the router's latency model
against vLLM's own inter-token latency, and polyserve against round-robin. Prints JSON.

    scripts/real_vllm.sh --ports 8101,8102 --eager &        # two real servers (or --start)
    scripts/bench_real_policies.py --urls http://127.0.0.1:8101,http://127.0.0.1:8102 \\
        [--sections overhead,model,policies] [--repeat 3] [--json OUT]

Sections:

* ``overhead``: the same closed-loop streams (64-token prompts, 64 output tokens) against
  server 1 directly and through a router whose only backend it is, alternated ``--repeat``
  times; client-side TTFT and inter-chunk-gap medians at concurrency 1 and 8.
* ``model-defaults``: load levels 1, 4, 8 per server through a router without a profile
  (``least-request``, 2 x level streams; its model starts from the engine defaults, a
  GPU-sized guess, and learns online only); per server and level: vLLM's own mean ITL
  over the level (``vllm:inter_token_latency_seconds`` sum/count deltas), the router's
  observed gaps, and its model's mean and p90 prediction at that load.
* ``model``: the same, the router seeded with a ``slorouter profile`` of server 1 (both
  servers are profiled at once, levels 1,4,8, so that each is measured while the other
  is busy too, as behind the router).
* ``policies``: tiers ``tight`` (TPOT 1.5 x the single-stream step, TTFT 3 x the
  single-stream TTFT) on server 1 and ``loose`` (TPOT 4 x, TTFT 10 x) on server 2; the
  single-stream step is vLLM's own ITL at level 1 in ``model-defaults`` and the TTFT the
  router's (the faster server of the two); the same closed-loop
  users (``--users``, by default chosen from vLLM's measured ITL curve: as many tight
  users as one server holds well within the tight TPOT, as many loose ones as one
  server holds within 0.6 x the loose TPOT; 96 output tokens) for ``--seconds`` through ``round-robin``
  and ``polyserve`` (both routers start from the model state ``model-defaults`` left);
  DSLO attainment per tier is the router's own (``Outcome.max_lateness_s <= 0``).

The tests in ``tests/e2e/test_router_real_model.py`` load this file and call the same
functions (it is not a package module).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.table import Table

from slorouter import cli
from slorouter.app import build_app, runner_for
from slorouter.config import parse_config
from slorouter.config.model import RouterConfig
from slorouter.http.context import SERVICES, Services
from slorouter.models.latency import OnlineLatency
from slorouter.models.profile import StepProfile
from slorouter.values import Outcome, Status

MODEL = "tiny"
REQUEST_TIMEOUT_S = 30.0  # policy runs: a request not done by then counts as a miss (never hangs the run)
WORDS = "the quick brown fox jumps over the lazy dog while a small cat reads old books " * 3
_ids = itertools.count()


@dataclass
class Record:
    """One request as the client saw it."""

    tier: str | None
    ok: bool
    ttft_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)  # between token-bearing chunks


async def stream_one(s: aiohttp.ClientSession, url: str, tier: str | None, tokens: int) -> Record:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"#{next(_ids)} {WORDS}"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"x-slo-tier": tier} if tier else {}
    t0 = time.perf_counter()
    rec = Record(tier, False)
    last: float | None = None
    try:
        async with s.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status != 200:
                await r.read()
                return rec
            async for line in r.content:
                if not line.startswith(b"data: {") or b'"content":""' in line or b'"content"' not in line:
                    continue
                now = time.perf_counter()
                if last is None:
                    rec.ttft_s = now - t0
                else:
                    rec.gaps_s.append(now - last)
                last = now
    except (aiohttp.ClientError, TimeoutError):  # the session's per-request timeout: a miss
        return rec
    rec.ok = last is not None
    return rec


async def closed_loop(
    s: aiohttp.ClientSession,
    url: str,
    users: Mapping[str | None, int],
    tokens: int,
    *,
    seconds: float | None = None,
    requests: int | None = None,
) -> list[Record]:
    """``users[tier]`` users per tier, each sending its next request when the previous one
    ends, for ``seconds`` (then in-flight requests finish) or until ``requests`` were sent."""
    out: list[Record] = []
    end = None if seconds is None else time.monotonic() + seconds
    budget = itertools.count()

    async def user(tier: str | None) -> None:
        while (end is None or time.monotonic() < end) and (requests is None or next(budget) < requests):
            out.append(await stream_one(s, url, tier, tokens))

    await asyncio.gather(*(user(t) for t, n in users.items() for _ in range(n)))
    return out


async def vllm_itl(s: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(sum, count) of vLLM's ``inter_token_latency_seconds`` histogram."""
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    tot = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        for k in tot:
            if line.startswith(f"vllm:inter_token_latency_seconds{k}{{"):
                tot[k] += float(line.rsplit(" ", 1)[1])
    return tot["_sum"], tot["_count"]


def itl_between(before: tuple[float, float], after: tuple[float, float]) -> float:
    n = after[1] - before[1]
    return (after[0] - before[0]) / n if n > 0 else float("nan")


# -- the router, in this process -------------------------------------------------------


def config(
    urls: Sequence[str],
    policy: str,
    tiers: list[dict[str, Any]] | None = None,
    backend_tiers: Sequence[str] | None = None,
    profile: Path | None = None,
    state_file: Path | None = None,
) -> RouterConfig:
    tiers = tiers or [{"name": "standard", "class": "latency", "ttft_ms": 5000, "tpot_ms": 500}]
    names = list(backend_tiers or [tiers[0]["name"]] * len(urls))
    models: dict[str, Any] = {}
    if profile is not None:
        models["profile"] = str(profile)
    if state_file is not None:
        models["state_file"] = str(state_file)
    raw = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "tiers": tiers,
        "backends": [
            {"name": f"e{i}", "url": u, "engine": "vllm", "tier": names[i]} for i, u in enumerate(urls)
        ],
        "routing": {"default_tier": tiers[0]["name"], "allow_anonymous": True},
        "policy": {"kind": policy},
        "models": models,
    }
    return parse_config(raw, "<bench_real_policies>")


@dataclass
class Router:
    url: str
    services: Services
    outcomes: list[Outcome]


@asynccontextmanager
async def router(cfg: RouterConfig) -> AsyncIterator[Router]:
    """The real router (``build_app``, as ``slorouter serve`` runs it) on an ephemeral port;
    every finished request's :class:`Outcome` is collected."""
    app = build_app(cfg)
    runner = runner_for(app, cfg)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        svc = app[SERVICES]
        got: list[Outcome] = []
        svc.tracker.add_listener(got.append)
        yield Router(f"http://127.0.0.1:{port}", svc, got)
    finally:
        await runner.cleanup()


# -- overhead --------------------------------------------------------------------------


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


# -- the router's latency model against vLLM -------------------------------------------


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


# -- polyserve vs round-robin ----------------------------------------------------------


def single_stream(levels: dict[str, Any]) -> tuple[float, float]:
    """(step, TTFT) the tiers are derived from, from :func:`model_levels`: vLLM's own mean
    ITL at level 1 and the router-measured mean TTFT at level 4 (at least that at level 1),
    of the faster server (a busy machine's hiccups inflate means; an SLO should be what
    the engine can do). Why level 4 for the TTFT: the comparison is about TPOT bins, and
    on a busy host a CPU server's first tokens slow down with the streams it holds and
    with prompts arriving together far more than its steps do (230 ms at one stream,
    600-680 ms at four were seen) — the router learns that (its TTFT excess), and a tight
    TTFT of 3x the idle one then tests the host, not the routing."""
    ones = [r for r in levels["rows"] if r["level"] == 1]
    fours = [r["ttft_ms"] for r in levels["rows"] if r["level"] == 4]
    ttft = min(r["ttft_ms"] for r in ones)
    if fours:
        ttft = max(ttft, min(fours))
    return min(r["vllm_itl_ms"] for r in ones) / 1e3, ttft / 1e3


def itl_curve(levels: dict[str, Any]) -> tuple[float, float]:
    """vLLM's own mean ITL against the streams per server, ``itl(b) = a + s·b`` (seconds),
    least squares over the levels of :func:`model_levels` (the faster server's at each
    level: a busy machine's hiccups only ever slow a level down)."""
    best: dict[int, float] = {}
    for r in levels["rows"]:
        best[r["level"]] = min(best.get(r["level"], math.inf), r["vllm_itl_ms"] / 1e3)
    xs, ys = list(best), [best[x] for x in best]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx) if sxx else 0.0
    return my - slope * mx, slope


def choose_users(curve: tuple[float, float], tiers: list[dict[str, Any]]) -> dict[str, int]:
    """Closed-loop users that make the comparison meaningful on *these* servers: as many
    tight users as one server holds at 1.3x below the tight TPOT (at least 1, at most 2:
    the tight TTFT, 3x the single-stream TTFT, leaves no room for queueing behind more),
    and as many loose users as one server holds at 0.6x the loose TPOT (the policies
    judge by a p90, 1.1-1.3x vLLM's mean here) — so a policy
    that gives each tier its own server can meet both, while one that mixes them puts
    about half of all users on each server (at 4 / 1.5 x the single-stream step per loose
    TPOT vs tight TPOT, far above the tight TPOT)."""
    a, s = curve
    tight = next(t["tpot_ms"] / 1e3 for t in tiers if t["name"] == "tight")
    loose = next(t["tpot_ms"] / 1e3 for t in tiers if t["name"] == "loose")

    def holds(limit: float) -> int:
        return int((limit - a) / s) if s > 0 else 64

    return {"tight": min(2, max(1, holds(tight / 1.3))), "loose": min(40, max(4, holds(0.6 * loose)))}


def slo_tiers(step_s: float, ttft_s: float) -> list[dict[str, Any]]:
    """tight: TPOT 1.5 x the single-stream step, TTFT 3 x the single-stream TTFT; loose: 4 x, 10 x."""
    ms, first = 1e3 * step_s, 1e3 * ttft_s
    return [
        {"name": "tight", "class": "latency", "ttft_ms": round(3 * first), "tpot_ms": round(1.5 * ms, 1)},
        {"name": "loose", "class": "latency", "ttft_ms": round(10 * first), "tpot_ms": round(4 * ms, 1)},
    ]


def met(o: Outcome) -> bool:
    return o.status is Status.OK and o.max_lateness_s is not None and o.max_lateness_s <= 0


async def run_policy(
    policy: str,
    urls: Sequence[str],
    tiers: list[dict[str, Any]],
    users: Mapping[str, int],
    seconds: float,
    tokens: int,
    profile: Path | None,
    state: bytes | None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        state_file = None
        if state is not None:  # every run starts from the same learned state
            state_file = Path(d) / "state.json"
            state_file.write_bytes(state)
        cfg = config(urls, policy, tiers, ["tight", "loose"], profile, state_file)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with router(cfg) as rt, aiohttp.ClientSession(timeout=timeout) as s:
            before = [await vllm_itl(s, u) for u in urls]
            t0 = time.monotonic()
            await closed_loop(s, rt.url, {t: n for t, n in users.items()}, tokens, seconds=seconds)
            elapsed = time.monotonic() - t0
            after = [await vllm_itl(s, u) for u in urls]
            outcomes = list(rt.outcomes)
            zero = rt.services.tracker.all_zero()
    res: dict[str, Any] = {
        "seconds": elapsed,
        "counters_zero": zero,
        "vllm_itl_ms": {
            f"e{i}": 1e3 * itl_between(a, b) for i, (a, b) in enumerate(zip(before, after, strict=True))
        },
    }
    for t in users:
        mine = [o for o in outcomes if o.tier == t]
        tpots = [x for o in mine if (x := o.mean_tpot_s) is not None]
        ttfts = [x for o in mine if (x := o.ttft_s) is not None]
        waits = [o.dispatched_at - o.arrival for o in mine if o.dispatched_at is not None]
        res[t] = {
            "requests": len(mine),
            "met": sum(map(met, mine)),
            "attainment": sum(map(met, mine)) / len(mine) if mine else 0.0,
            "errors": sum(o.status is not Status.OK for o in mine),
            "never_dispatched": sum(o.backend is None for o in mine),
            "queue_mean_ms": 1e3 * statistics.fmean(waits) if waits else None,
            "ttft_mean_ms": 1e3 * statistics.fmean(ttfts) if ttfts else None,
            "tpot_mean_ms": 1e3 * statistics.fmean(tpots) if tpots else None,
            "tokens_per_s": sum(o.output_tokens for o in mine) / elapsed,
            "by_backend": {
                b: sum(o.backend == b for o in mine) for b in sorted({o.backend or "-" for o in mine})
            },
        }
    return res


async def compare_policies(
    urls: Sequence[str],
    step_s: float,
    ttft_s: float,
    profile: Path | None,
    state: bytes | None,
    users: Mapping[str, int] | None = None,
    seconds: float = 20.0,
    tokens: int = 96,
    policies: Sequence[str] = ("round-robin", "polyserve"),
    curve: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """``users`` per tier, or chosen from ``curve`` (:func:`itl_curve`) by :func:`choose_users`."""
    tiers = slo_tiers(step_s, ttft_s)
    if users is None:
        if curve is None:
            raise ValueError("give users or the servers' ITL curve")
        users = choose_users(curve, tiers)
    users = dict(users)
    out: dict[str, Any] = {
        "single_stream_step_ms": 1e3 * step_s,
        "single_stream_ttft_ms": 1e3 * ttft_s,
        "itl_curve_ms": None if curve is None else {"a": 1e3 * curve[0], "per_stream": 1e3 * curve[1]},
        "tiers": tiers,
        "users": users,
    }
    for p in policies:
        out[p] = await run_policy(p, urls, tiers, users, seconds, tokens, profile, state)
    return out


# -- main ------------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.rstrip("/") for u in args.urls.split(",") if u]
    sections = set(args.sections.split(","))
    result: dict[str, Any] = {"urls": urls}
    if "overhead" in sections:
        result["overhead"] = await overhead(urls[0], (1, 8), args.repeat)
    state: bytes | None = None
    if sections & {"model-defaults", "policies"}:  # the router learns alone, from the engine defaults
        with tempfile.TemporaryDirectory() as d:
            state_file = Path(d) / "state.json"
            result["model_defaults"] = await model_levels(urls, None, state_file)
            result["model_defaults_host_noise"] = unsteady(result["model_defaults"])
            state = state_file.read_bytes()
        step_s, ttft_s = single_stream(result["model_defaults"])
        result["single_stream_step_ms"], result["single_stream_ttft_ms"] = 1e3 * step_s, 1e3 * ttft_s
    if "model" in sections:  # the router seeded with a profile of server 1
        with tempfile.TemporaryDirectory() as d:
            profiles = await profile_servers(urls, Path(d))
            result["profiles"] = {f"e{i}": profile_summary(p) for i, p in enumerate(profiles)}
            result["model"] = await model_levels(urls, profiles[0], None)
    if "policies" in sections:
        step = (args.step_ms or result["single_stream_step_ms"]) / 1e3
        first = (args.ttft_ms or result["single_stream_ttft_ms"]) / 1e3
        users: dict[str, int] | None = None
        if args.users != "auto":
            tight, loose = (int(x) for x in args.users.split(","))
            users = {"tight": tight, "loose": loose}
        curve = itl_curve(result["model_defaults"])
        result["policies"] = [
            await compare_policies(urls, step, first, None, state, users, seconds=args.seconds, curve=curve)
            for _ in range(args.repeat)
        ]
    return result


def _f(x: Any, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def tables(result: dict[str, Any], console: Console) -> None:
    """The JSON's figures as terminal tables."""
    for c, row in result.get("overhead", {}).items():
        t = Table(title=f"router overhead, concurrency {c} (client-side medians, ms)")
        for col in ("path", "requests", "TTFT p50", "ITL p50"):
            t.add_column(col, justify="right")
        for name in ("direct", "router"):
            x = row[name]
            t.add_row(name, str(x["requests"]), _f(x["ttft_p50_ms"]), _f(x["itl_p50_ms"]))
        t.add_row("delta", "", _f(row["ttft_delta_ms"], "+.1f"), _f(row["itl_delta_ms"], "+.1f"))
        console.print(t)
    for key, title in (("model_defaults", "engine defaults"), ("model", "seeded with a profile")):
        if key not in result:
            continue
        t = Table(title=f"the router's model vs vLLM's own ITL ({title}; ms)")
        cols = ("level", "server", "vLLM ITL", "router gaps", "batch", "model mean", "model p90", "error %")
        for col in cols:
            t.add_column(col, justify="right")
        for r in result[key]["rows"]:
            t.add_row(
                str(r["level"]),
                r["backend"],
                _f(r["vllm_itl_ms"]),
                _f(r["router_gap_ms"]),
                _f(r["batch"]),
                _f(r["model_mean_ms"]),
                _f(r["model_p90_ms"]),
                _f(r["error_pct"], "+.0f"),
            )
        console.print(t)
    for i, run in enumerate(result.get("policies", [])):
        tiers = ", ".join(f"{x['name']} TPOT {x['tpot_ms']} ms TTFT {x['ttft_ms']} ms" for x in run["tiers"])
        t = Table(title=f"run {i + 1}: {tiers}; users {run['users']}")
        for col in ("policy", "tier", "requests", "met", "DSLO att.", "TTFT", "TPOT", "tok/s", "servers"):
            t.add_column(col, justify="right")
        for pol in ("round-robin", "polyserve"):
            for tier in run["users"]:
                x = run[pol][tier]
                t.add_row(
                    pol,
                    tier,
                    str(x["requests"]),
                    str(x["met"]),
                    _f(x["attainment"], ".2f"),
                    _f(x["ttft_mean_ms"], ".0f"),
                    _f(x["tpot_mean_ms"]),
                    _f(x["tokens_per_s"], ".0f"),
                    " ".join(f"{b}:{n}" for b, n in x["by_backend"].items()),
                )
        console.print(t)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urls", required=True, help="comma-separated vLLM base URLs (two for model/policies)")
    ap.add_argument("--sections", default="overhead,model-defaults,model,policies")
    ap.add_argument("--repeat", type=int, default=3, help="alternations (overhead) / policy runs")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of load per policy run")
    ap.add_argument(
        "--users",
        default="auto",
        help="closed-loop users: tight,loose (default auto: from the servers' measured ITL curve)",
    )
    ap.add_argument("--step-ms", type=float, help="single-stream step for the tiers (default: measured)")
    ap.add_argument("--ttft-ms", type=float, help="single-stream TTFT for the tiers (default: measured)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if len([u for u in args.urls.split(",") if u]) < 2 and set(args.sections.split(",")) - {"overhead"}:
        ap.error("--urls needs two servers for the model and policies sections")
    result = asyncio.run(_main(args))
    text = json.dumps(result, indent=2, default=lambda o: asdict(o))
    print(text)
    tables(result, Console(stderr=True))
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
