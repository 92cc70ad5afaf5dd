"""polyserve against round-robin on real vLLM: SLO tiers and closed-loop users derived from
the servers' measured ITL curve, one run per policy from the same learned state, each
request judged by the router's own verdict (the one SLO judge)."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.real.harness import config, router
from benchmarks.real.streams import closed_loop, itl_between, vllm_itl
from slorouter.judge import verdict
from slorouter.values import Outcome, Status

# named variants a comparison may run besides the registered kinds: polyserve without
# lending its tight server's spare room (slorouter/policy/lending.py)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"polyserve:no-lend": ("polyserve", {"lend_room": False})}
REQUEST_TIMEOUT_S = 30.0  # policy runs: a request not done by then counts as a miss (never hangs the run)


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


def _inside(o: Outcome, start: float, end: float) -> float:
    """Share of the request's life (arrival to finish) inside ``[start, end]``."""
    life = o.finished_at - o.arrival
    if life <= 0:
        return 1.0 if start <= o.finished_at <= end else 0.0
    return max(0.0, min(end, o.finished_at) - max(start, o.arrival)) / life


def met(o: Outcome) -> bool:
    """The request met its tier's SLO, as the router judges it (:func:`slorouter.judge.verdict`)."""
    v = verdict(o)
    return v is not None and v.met


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
        kind, params = VARIANTS.get(policy, (policy, {}))
        cfg = config(urls, kind, tiers, ["tight", "loose"], profile, state_file, params)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with router(cfg) as rt, aiohttp.ClientSession(timeout=timeout) as s:
            before = [await vllm_itl(s, u) for u in urls]
            t0 = time.monotonic()
            await closed_loop(s, rt.url, {t: n for t, n in users.items()}, tokens, seconds=seconds)
            elapsed = time.monotonic() - t0
            after = [await vllm_itl(s, u) for u in urls]
            outcomes = list(rt.outcomes)
            zero = rt.services.tracker.all_zero()
    # the users' window: from the first arrival, ``seconds`` long. After it, in-flight
    # requests drain with fewer users active (a policy whose slowest server is slower drains
    # longer), so the steady rate counts each good request by the share of its life
    # (arrival to finish) inside the window — closed-loop users in lockstep (a deterministic
    # engine) would otherwise make a count of completions depend on their phase
    start = min((o.arrival for o in outcomes), default=0.0)
    end = start + seconds
    res: dict[str, Any] = {
        "seconds": elapsed,
        "window_s": seconds,
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
            "good_in_window": sum(_inside(o, start, end) for o in mine if met(o)),
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


def totals(run: Mapping[str, Any], tiers: Sequence[str] = ("tight", "loose")) -> dict[str, float]:
    """All tiers of one :func:`run_policy` result: good and sent requests, good per second
    over the whole run (drain included) and per second of the users' window (each good
    request counted by the share of its life inside it: the closed loop's steady rate)."""
    good = sum(run[t]["met"] for t in tiers)
    sent = sum(run[t]["requests"] for t in tiers)
    window = sum(run[t]["good_in_window"] for t in tiers)
    return {
        "good": good,
        "sent": sent,
        "good_per_s": good / run["seconds"],
        "good_in_window": window,
        "window_good_per_s": window / run["window_s"],
    }
