#!/usr/bin/env python3
"""What sharing the load picture between router replicas costs (fleet simulator, deterministic).

    scripts/bench_replicas.py --json OUT [--scenario polyserve-conv] [--requests N] [--jobs N]
                              [--replicas 1,2,4,8] [--sync-ms 0,50,100,250] [--event-ms 25]

First finds, with one router, the goodput rate (the highest rate at which every tier
attains >= 90 % of its per-token deadlines). At that rate it runs R replicas (arrivals
spread at random, each replica a whole router: tracker, models, policy, admission queue)
sharing rows every Δ ms through the in-process store — and ``--event-ms`` after the last
exchange when a replica's own row changed (event-driven publishing; ``event_ms`` 0: ticks
only, also run at each Δ with the quota for comparison) —, with and without the herding
quota, and the no-sync control (replicas never see each other's load). The same seeds and
workloads everywhere: only the routers differ. ``--seeds N`` runs every configuration at
the scenario's seed and the N − 1 next ones (workload, arrival split) and averages: at
the goodput rate one router is on the edge of a cliff where a different seed moves a tier
by several points, more than the 1 point the comparison is about.

Writes ``{"scenario", "rate_rps", "baseline_goodput_rps_per_server", "runs": [{"replicas",
"sync_ms", "event_ms", "quota", "sync", "goodput_rps_per_server", "tiers": {name:
attainment}, "min_tier_delta_points", "goodput_vs_baseline", "min_tier_delta_vs_sync0_points",
"exchanges_per_s", "seeds": {seed: {...}}}]}`` and prints a table (``exchanges_per_s``:
store round trips per replica per second; ``..._vs_sync0``: against the same replicas
sharing without staleness, Δ = 0 — the cost of staleness alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slorouter.fleetsim.bound import fluid_reference
from slorouter.fleetsim.fleet import SimOptions, run_once
from slorouter.fleetsim.replicas import ReplicaOptions
from slorouter.fleetsim.scenario import load_scenario
from slorouter.fleetsim.sweep import sweep

Key = tuple[int, float, bool, bool, float]  # replicas, sync_ms, quota, sync, event_ms


def _one(scenario: str, policy: str, rate: float, requests: int, key: Key, seed: int) -> dict[str, Any]:
    r, ms, quota, sync, ev = key
    scn = load_scenario(scenario)
    opt = SimOptions(replicas=ReplicaOptions(r, ms, quota=quota, sync=sync, event_ms=ev))
    res = run_once(scn, policy, rate, requests=requests, seed=seed, options=opt)
    s = res.summary
    return {
        "goodput_rps_per_server": s["overall"]["goodput_rps_per_server"],
        "tiers": {t: v["dslo_attainment"] for t, v in s["tiers"].items()},
        "exchanges_per_s": res.sync_exchanges_per_s,
        "cpu_s": res.cpu_s,
    }


def _mean(key: Key, seeds: list[int], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over the seeds: attainments and goodput averaged, each seed's kept."""
    r, ms, quota, sync, ev = key
    n = len(per_seed)
    tiers = per_seed[0]["tiers"]
    ex = [p["exchanges_per_s"] for p in per_seed]
    return {
        "replicas": r,
        "sync_ms": ms if sync and r > 1 else None,
        "event_ms": ev if sync and r > 1 and ms > 0 else None,
        "quota": quota if sync and r > 1 else None,
        "sync": sync if r > 1 else None,
        "goodput_rps_per_server": sum(p["goodput_rps_per_server"] for p in per_seed) / n,
        "tiers": {t: sum(p["tiers"][t] for p in per_seed) / n for t in tiers},
        "exchanges_per_s": None if ex[0] is None else sum(ex) / n,
        "cpu_s": sum(p["cpu_s"] for p in per_seed),
        "seeds": {
            str(s): {"goodput_rps_per_server": p["goodput_rps_per_server"], "tiers": p["tiers"]}
            for s, p in zip(seeds, per_seed, strict=True)
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT", required=True)
    ap.add_argument("--scenario", default="polyserve-conv")
    ap.add_argument("--policy", default="polyserve")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--replicas", default="1,2,4,8")
    ap.add_argument("--sync-ms", default="0,50,100,250")
    ap.add_argument("--event-ms", type=float, default=25.0)
    ap.add_argument("--seeds", type=int, default=1, help="run every configuration at this many seeds")
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args(argv)
    if not Path(args.json).resolve().parent.is_dir():
        print(f"--json {args.json}: no such directory; create it first", file=sys.stderr)
        return 2
    try:
        reps = sorted({int(x) for x in args.replicas.split(",")})
        syncs = sorted({float(x) for x in args.sync_ms.split(",")})
    except ValueError:
        print("--replicas and --sync-ms take comma-separated numbers, e.g. 1,2,4,8", file=sys.stderr)
        return 2
    if not reps or reps[0] < 1 or (syncs and syncs[0] < 0) or args.event_ms < 0 or args.seeds < 1:
        print("--replicas and --seeds must be >= 1, --sync-ms and --event-ms >= 0", file=sys.stderr)
        return 2
    t0 = time.time()
    console = Console()
    scn = load_scenario(args.scenario)
    fb = fluid_reference(scn)

    def run1(rate: float) -> Any:
        return run_once(scn, args.policy, rate, requests=args.requests)

    sw = sweep(run1, 0.8 * fb.rps_per_server * scn.servers, targets=(0.9,))
    rate = sw.goodput[0.9]
    if rate is None:
        print("one router reaches 90 % on every tier at no rate tried", file=sys.stderr)
        return 1
    per = rate / scn.servers
    console.print(f"{args.scenario}: one router's goodput rate at 90 %: {rate:.1f} req/s ({per:.2f}/server)")
    ev = args.event_ms
    keys: list[Key] = [(1, 0.0, True, True, 0.0)]
    for r in reps:
        if r == 1:
            continue
        for ms in syncs:
            # at Δ = 0 nothing is stale: the quota is off either way (one run)
            for quota in (True, False) if ms > 0 else (True,):
                keys.append((r, ms, quota, True, ev if ms > 0 else 0.0))
        if ev > 0:
            for ms in syncs:
                if ms == 100.0:
                    keys.append((r, ms, True, True, 0.0))  # ticks only, for comparison
        keys.append((r, 0.0, False, False, 0.0))
    seeds = [scn.seed + k for k in range(args.seeds)]
    jobs = [(k, sd) for k in keys for sd in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            futs = [ex.submit(_one, args.scenario, args.policy, rate, args.requests, k, sd) for k, sd in jobs]
            got = [f.result() for f in futs]
    else:
        got = [_one(args.scenario, args.policy, rate, args.requests, k, sd) for k, sd in jobs]
    ns = len(seeds)
    runs = [_mean(k, seeds, got[i * ns : (i + 1) * ns]) for i, k in enumerate(keys)]
    base = runs[0]
    for run in runs:
        run["min_tier_delta_points"] = min(
            100.0 * (run["tiers"][t] - base["tiers"][t]) for t in base["tiers"]
        )
        run["goodput_vs_baseline"] = run["goodput_rps_per_server"] / base["goodput_rps_per_server"]
        ref = next((x for x in runs if x["replicas"] == run["replicas"] and x["sync_ms"] == 0.0), None)
        run["min_tier_delta_vs_sync0_points"] = (
            None
            if ref is None or run["replicas"] == 1
            else min(100.0 * (run["tiers"][t] - ref["tiers"][t]) for t in ref["tiers"])
        )
    out = {
        "scenario": args.scenario,
        "policy": args.policy,
        "requests": args.requests,
        "seeds": seeds,
        "rate_rps": rate,
        "baseline_goodput_rps_per_server": base["goodput_rps_per_server"],
        "runs": runs,
        "wall_s": time.time() - t0,
    }
    Path(args.json).write_text(json.dumps(out, indent=2))
    tab = Table(
        title=f"{args.policy} on {args.scenario} at {rate:.1f} req/s, {args.requests} requests, "
        f"mean of {ns} seed(s)"
    )
    for c in (
        "replicas",
        "sync",
        "Δ ms",
        "event ms",
        "quota",
        "exch/s",
        "good/s/server",
        "vs R=1",
        "worst tier Δ (points)",
        "vs Δ=0",
    ):
        tab.add_column(c, justify="right")
    tab.add_column("tiers")
    for run in runs:
        sync = "—" if run["sync"] is None else ("yes" if run["sync"] else "NO")
        tab.add_row(
            str(run["replicas"]),
            sync,
            "—" if run["sync_ms"] is None else f"{run['sync_ms']:g}",
            "—" if run["event_ms"] is None else f"{run['event_ms']:g}",
            "—" if run["quota"] is None else ("on" if run["quota"] else "off"),
            "—" if run["exchanges_per_s"] is None else f"{run['exchanges_per_s']:.0f}",
            f"{run['goodput_rps_per_server']:.3f}",
            f"{run['goodput_vs_baseline']:.3f}",
            f"{run['min_tier_delta_points']:+.2f}",
            "—"
            if run["min_tier_delta_vs_sync0_points"] is None
            else f"{run['min_tier_delta_vs_sync0_points']:+.2f}",
            " ".join(f"{t} {100 * v:.1f}" for t, v in run["tiers"].items()),
        )
    console.print(tab)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
