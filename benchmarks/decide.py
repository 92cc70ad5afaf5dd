#!/usr/bin/env python3
"""Routing decision cost: µs per ``select`` call at 20, 200 and 1,000 servers with 4 and 8
tiers, for every policy (goal for polyserve: ≤ 50 µs p99 at 1,000 servers).

    scripts/bench_decide.py [--json OUT] [--decisions N] [--servers 20,200,1000] [--tiers 4,8]

The fleet is loaded to about half its capacity (random residents per server, the
``h100-8b`` profile, the online latency model seeded from it); each decision is for a
random request of a random tier and is dispatched (so the state keeps changing), and a
random resident finishes, keeping the load steady — as in a live router.
Timing is around what a live decision costs — ``policy.select(request, tracker.snapshot())``
(the snapshot of the live state, then the choice) — after 200 warm-up decisions: the thread's CPU time
(``thread_time_ns``: what the decision costs, immune to the OS descheduling us on a
shared machine) and wall time (``perf_counter_ns``). The setup's objects are moved out of
the garbage collector's young generations (``gc.freeze``), as a long-running router's
are; collections triggered by the decisions themselves are still counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from slorouter.clock import ManualClock
from slorouter.engine.profiles import BUILTIN_PROFILES
from slorouter.models.latency import build_latency
from slorouter.models.lengths import build_lengths
from slorouter.policy import registry
from slorouter.policy.base import PolicyContext
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker
from slorouter.values import Dispatch, RequestInfo, Slo, SloClass, Status, Tier

TPOTS_MS = (20, 30, 40, 50, 65, 80, 100, 150)
POLICIES: dict[str, tuple[str, dict[str, Any]]] = {
    "polyserve": ("polyserve", {"placement": "spread"}),
    "polyserve:pack": ("polyserve", {"placement": "pack"}),
    "polyserve:static-bins": ("polyserve", {"rebalance": False}),
    "slo-pack": ("slo-pack", {}),
    "static-partition": ("static-partition", {}),
    "least-tokens": ("least-tokens", {}),
    "round-robin": ("round-robin", {}),
    "power-of-two": ("power-of-two", {}),
}


def measure(
    kind: str, params: dict[str, Any], servers: int, n_tiers: int, decisions: int, seed: int = 0
) -> dict[str, float]:
    rng = random.Random(seed)
    clock = ManualClock()
    tiers = [
        Tier(f"t{ms}", Slo(SloClass.LATENCY, ttft_s=1.0, tpot_s=ms / 1e3), rank=i)
        for i, ms in enumerate(TPOTS_MS[:n_tiers])
    ]
    backends = BackendSet(
        [Backend(f"s{i}", f"http://s{i}", tier=tiers[i % n_tiers].name) for i in range(servers)], tiers
    )
    prof = BUILTIN_PROFILES["h100-8b"]
    lat = build_latency(clock, profile=prof, prefill_ratio=5.0)
    lengths = build_lengths(clock, default_output_tokens=200)
    tracker = Tracker(clock, backends, Health(b.id for b in backends.backends), lat, lengths)
    policy = registry.build(kind, params, PolicyContext(clock, seed))
    rid = 0
    live: list[int] = []

    def new_request(t: Tier) -> RequestInfo:
        nonlocal rid
        rid += 1
        return RequestInfo(
            rid, t, clock.now(), prompt_tokens=rng.randint(50, 3000), max_tokens=None, output_bound=200
        )

    # about half of each server's capacity under its tier's TPOT
    for b in backends.backends:
        t = backends.tier_by_name[b.tier]
        for _ in range(rng.randint(10, 20 + int(1000 * (t.slo.tpot_s or 0.05)))):
            r = new_request(t)
            tracker.on_arrival(r)
            tracker.on_dispatch(r.rid, b.id)
            tracker.on_tokens(r.rid, rng.randint(1, 100))
            live.append(r.rid)
    gc.collect()
    gc.freeze()  # the fleet's setup objects: out of the young generations' way
    times: list[float] = []
    walls: list[float] = []
    warm = 200
    for k in range(decisions + warm):
        clock.advance(0.001)
        r = new_request(rng.choice(tiers))
        tracker.on_arrival(r)
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        d = policy.select(r, tracker.snapshot())
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        if k >= warm:
            times.append((c1 - c0) / 1000)
            walls.append((t1 - t0) / 1000)
        if isinstance(d, Dispatch):
            tracker.on_dispatch(r.rid, d.backends[0])
            policy.on_dispatch(r, d.backends[0])
            tracker.on_tokens(r.rid, 1)
            live.append(r.rid)
        else:
            tracker.on_finish(r.rid, Status.REJECTED)
        # a random resident finishes: steady load
        k = rng.randrange(len(live))
        live[k], live[-1] = live[-1], live[k]
        out = tracker.on_finish(live.pop(), Status.OK)
        if out is not None:
            policy.on_finish(out)
    gc.unfreeze()
    times.sort()
    walls.sort()
    return {
        "p50_us": times[len(times) // 2],
        "p99_us": times[int(0.99 * (len(times) - 1))],
        "mean_us": statistics.fmean(times),
        "wall_p50_us": walls[len(walls) // 2],
        "wall_p99_us": walls[int(0.99 * (len(walls) - 1))],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--decisions", type=int, default=3000)
    ap.add_argument("--servers", default="20,200,1000")
    ap.add_argument("--tiers", default="4,8")
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"decisions": args.decisions, "results": []}
    cols = ("cpu p50 µs", "cpu p99 µs", "cpu mean", "wall p50", "wall p99")
    print(f"{'policy':18} {'servers':>7} {'tiers':>5} " + " ".join(f"{c:>10}" for c in cols))
    for name in args.policies.split(","):
        kind, params = POLICIES[name]
        for n in (int(x) for x in args.servers.split(",")):
            for t in (int(x) for x in args.tiers.split(",")):
                m = measure(kind, params, n, t, args.decisions)
                out["results"].append({"policy": name, "servers": n, "tiers": t, **m})
                vals = (m["p50_us"], m["p99_us"], m["mean_us"], m["wall_p50_us"], m["wall_p99_us"])
                print(f"{name:18} {n:7d} {t:5d} " + " ".join(f"{v:10.1f}" for v in vals), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
