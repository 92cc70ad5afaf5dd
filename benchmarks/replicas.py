#!/usr/bin/env python3
"""What sharing the load picture between router replicas costs (fleet simulator, deterministic).

    scripts/bench_replicas.py --json OUT [--scenario polyserve-conv] [--requests N] [--seeds N]
                              [--rate RPS] [--rule mean|every] [--jobs N]
                              [--replicas 1,2,4,8] [--sync-ms 0,50,100,250] [--event-ms 25]
                              [--quota on,off] [--ticks-only 100] [--no-sync-replicas 2,4,8]
                              [--own-learning]

First finds one router's operating point: the highest rate at which every tier attains
>= 90 % of its per-token deadlines, judged over the same seeds the comparison then runs
(``--rule mean``, the default: each tier's attainment averaged over the seeds; ``every``:
every seed — see :mod:`benchmarks.replicas_stats` for why the mean); ``--rate`` pins it.
At that rate it runs R replicas (arrivals spread at random, each replica a whole router:
tracker, models, policy, admission queue) sharing rows every Δ ms through the in-process
store — and ``--event-ms`` after the last exchange when a replica's own row changed
(event-driven publishing; ``--ticks-only`` lists the Δ at which the quota is also run
with ticks only, for comparison) —, with the herding quota on and/or off (``--quota``),
and the no-sync control (replicas never see each other's load; at ``--no-sync-replicas``,
default every R > 1). Every replica's latency model learns from every replica's outcomes
(published with the rows, as live); ``--own-learning``: each from its own only. The same
seeds and workloads everywhere: only the routers differ.
Seeds are the scenario's (or ``--first-seed``) and the next ``--seeds`` − 1 (workload, arrival split); every
configuration is compared with one router **at the same seed** and the differences
averaged (mean, seed-to-seed SD, standard error).

Writes ``{"scenario", "rate_rps", "rate_rule", "share_learning", "seeds", "baseline_goodput_rps_per_server",
"runs": [{"replicas", "sync_ms", "event_ms", "quota", "sync", "goodput_rps_per_server",
"tiers": {name: attainment}, "tier_delta_points", "tier_delta_sd_points",
"tier_delta_se_points", "worst_tier", "min_tier_delta_points", "min_tier_delta_se_points",
"goodput_vs_baseline", "goodput_vs_baseline_se", "min_tier_delta_vs_sync0_points",
"exchanges_per_s", "seeds": {seed: {...}}}], "sweep": [...]}`` — rewritten after every
seed, so an interrupted run keeps the seeds done — and prints a table
(``exchanges_per_s``: store round trips per replica per second; ``..._vs_sync0``: against
the same replicas sharing without staleness, Δ = 0 — the cost of staleness alone).
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

from benchmarks.replicas_stats import RULES, paired, probe_summary
from slorouter.fleetsim.bound import fluid_reference
from slorouter.fleetsim.fleet import SimOptions, SimResult, run_once
from slorouter.fleetsim.replicas import ReplicaOptions
from slorouter.fleetsim.scenario import load_scenario
from slorouter.fleetsim.sweep import sweep

Key = tuple[int, float, bool, bool, float]  # replicas, sync_ms, quota, sync, event_ms
ONE: Key = (1, 0.0, True, True, 0.0)


def _one(
    scenario: str, policy: str, rate: float, requests: int, key: Key, seed: int, share: bool = True
) -> dict[str, Any]:
    r, ms, quota, sync, ev = key
    scn = load_scenario(scenario)
    opt = SimOptions(
        replicas=ReplicaOptions(r, ms, quota=quota, sync=sync, event_ms=ev, share_learning=share)
    )
    res = run_once(scn, policy, rate, requests=requests, seed=seed, options=opt)
    s = res.summary
    return {
        "goodput_rps_per_server": s["overall"]["goodput_rps_per_server"],
        "overall": s["overall"]["dslo_attainment"],
        "tiers": {t: v["dslo_attainment"] for t, v in s["tiers"].items()},
        "exchanges_per_s": res.sync_exchanges_per_s,
        "cpu_s": res.cpu_s,
    }


class Runner:
    """Runs (configuration, seed) pairs, in a process pool when ``jobs`` > 1."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pool = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else None

    def many(self, rate: float, jobs: list[tuple[Key, int]]) -> list[dict[str, Any]]:
        a = self.args
        if self.pool is None:
            return [_one(a.scenario, a.policy, rate, a.requests, k, sd, not a.own_learning) for k, sd in jobs]
        futs = [
            self.pool.submit(_one, a.scenario, a.policy, rate, a.requests, k, sd, not a.own_learning)
            for k, sd in jobs
        ]
        return [f.result() for f in futs]


def _keys(
    args: argparse.Namespace,
    reps: list[int],
    syncs: list[float],
    quotas: list[bool],
    ticks: list[float],
    nosync: list[int] | None,
) -> list[Key]:
    ev = args.event_ms
    keys: list[Key] = [ONE]
    for r in reps:
        if r == 1:
            continue
        for ms in syncs:
            # at Δ = 0 nothing is stale: the quota is off either way (one run)
            for quota in quotas if ms > 0 else [True]:
                keys.append((r, ms, quota, True, ev if ms > 0 else 0.0))
        if ev > 0:
            for ms in ticks:
                keys.append((r, ms, True, True, 0.0))  # ticks only, for comparison
        if nosync is None or r in nosync:
            keys.append((r, 0.0, False, False, 0.0))
    return keys


def _run_entry(key: Key, seeds: list[int], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over the seeds: attainments and goodput averaged, each seed's kept."""
    r, ms, quota, sync, ev = key
    n = len(per_seed)
    tiers = per_seed[0]["tiers"]
    ex = [p["exchanges_per_s"] for p in per_seed]
    return {
        "replicas": r,
        "sync_ms": ms if sync and r > 1 else None,
        "event_ms": ev if sync and r > 1 and ms > 0 else None,
        "quota": (quota and ms > 0) if sync and r > 1 else None,  # Δ = 0: no quota (nothing stale)
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


def _runs(keys: list[Key], seeds: list[int], got: dict[Key, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    runs = [_run_entry(k, seeds, got[k]) for k in keys]
    base = got[ONE]
    for k, run in zip(keys, runs, strict=True):
        run.update(paired(got[k], base))
        ref = next((x for x in keys if x[0] == k[0] and x[1] == 0.0 and x[3]), None)
        run["min_tier_delta_vs_sync0_points"] = (
            None if ref is None or k[0] == 1 else paired(got[k], got[ref])["min_tier_delta_points"]
        )
    return runs


Probed = dict[float, list[dict[str, Any]]]  # rate -> one router's results per seed


def _operating_point(
    args: argparse.Namespace, runner: Runner, seeds: list[int]
) -> tuple[float | None, Probed, list[dict[str, Any]]]:
    """One router's rate at 90 % on every tier over ``seeds`` (see module docs), the
    per-seed results of every rate probed, and the probes' summaries."""
    scn = load_scenario(args.scenario)
    cache: Probed = {}
    console = Console()

    def probe(rate: float) -> SimResult:
        per = runner.many(rate, [(ONE, sd) for sd in seeds])
        cache[round(rate, 6)] = per
        summary = probe_summary(per, args.rule)
        console.print(
            f"  {rate:.1f} req/s: "
            + " ".join(f"{t} {100 * v:.1f}" for t, v in summary["tiers"].items())
            + f" (worst by rule {args.rule}: {100 * summary['min_tier_dslo_attainment']:.1f})"
        )
        cpu = sum(p["cpu_s"] for p in per)
        return SimResult(summary, wall_s=0.0, cpu_s=cpu, decisions=0, steps=0, events=0)

    guess = 0.8 * fluid_reference(scn).rps_per_server * scn.servers
    sw = sweep(probe, guess, targets=(0.9,), overall_targets=())
    probes = [
        {"rate_rps": p.rate, "min_tier_dslo_attainment": p.min_tier, "tiers": p.result.summary["tiers"]}
        for p in sorted(sw.probes, key=lambda p: p.rate)
    ]
    return sw.goodput[0.9], cache, probes


def _list(text: str, conv: Any, what: str) -> list[Any]:
    try:
        return sorted({conv(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"{what} takes comma-separated values, e.g. 1,2,4,8") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT", required=True)
    ap.add_argument("--scenario", default="polyserve-conv")
    ap.add_argument("--policy", default="polyserve")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--replicas", default="1,2,4,8")
    ap.add_argument("--sync-ms", default="0,50,100,250")
    ap.add_argument("--event-ms", type=float, default=25.0)
    ap.add_argument("--quota", default="on,off", help="quota settings run at Δ > 0: on, off or on,off")
    ap.add_argument("--ticks-only", default="100", help="Δ values also run with ticks only ('' for none)")
    ap.add_argument(
        "--no-sync-replicas",
        default=None,
        help="replica counts of the no-sync control (default: every R > 1)",
    )
    ap.add_argument("--seeds", type=int, default=6, help="run every configuration at this many seeds")
    ap.add_argument("--first-seed", type=int, default=None, help="the first seed (default: the scenario's)")
    ap.add_argument("--rate", type=float, default=None, help="pin the rate (req/s) instead of finding it")
    ap.add_argument("--rule", choices=RULES, default="mean", help="how the seeds judge the operating point")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument(
        "--own-learning",
        action="store_true",
        help="each replica's latency model learns only from its own outcomes (default: from every "
        "replica's, published with the rows)",
    )
    args = ap.parse_args(argv)
    if not Path(args.json).resolve().parent.is_dir():
        print(f"--json {args.json}: no such directory; create it first", file=sys.stderr)
        return 2
    reps = _list(args.replicas, int, "--replicas")
    syncs = _list(args.sync_ms, float, "--sync-ms")
    ticks = _list(args.ticks_only, float, "--ticks-only")
    nosync = (
        None if args.no_sync_replicas is None else _list(args.no_sync_replicas, int, "--no-sync-replicas")
    )
    qs = {x.strip() for x in args.quota.split(",") if x.strip()}
    if not qs or not qs <= {"on", "off"}:
        print("--quota takes on, off or on,off", file=sys.stderr)
        return 2
    quotas = [q == "on" for q in ("on", "off") if q in qs]
    if (
        not reps
        or reps[0] < 1
        or (syncs and syncs[0] < 0)
        or args.event_ms < 0
        or args.seeds < 1
        or (args.rate is not None and args.rate <= 0)
    ):
        print("--replicas, --seeds must be >= 1, --sync-ms, --event-ms >= 0, --rate > 0", file=sys.stderr)
        return 2
    t0 = time.time()
    console = Console(width=220)
    scn = load_scenario(args.scenario)
    first = scn.seed if args.first_seed is None else args.first_seed
    seeds = [first + k for k in range(args.seeds)]
    runner = Runner(args)
    got: dict[Key, list[dict[str, Any]]] = {}
    probes: list[dict[str, Any]] = []
    if args.rate is None:
        console.print(
            f"{args.scenario}: one router's rate at 90 % on every tier, seeds {seeds} (rule {args.rule})"
        )
        rate, cache, probes = _operating_point(args, runner, seeds)
        if rate is None:
            print("one router reaches 90 % on every tier at no rate tried", file=sys.stderr)
            return 1
        got[ONE] = cache[round(rate, 6)]
    else:
        rate = args.rate
    console.print(f"{args.scenario}: rate {rate:.2f} req/s ({rate / scn.servers:.2f}/server)")
    keys = _keys(args, reps, syncs, quotas, ticks, nosync)
    todo = [k for k in keys if k not in got]
    for k in todo:
        got[k] = []
    done: list[int] = [] if todo else seeds
    runs: list[dict[str, Any]] = []

    def write() -> None:
        nonlocal runs
        sub = {k: v[: len(done)] for k, v in got.items()}
        runs = _runs(keys, done, sub) if done else []
        out = {
            "scenario": args.scenario,
            "policy": args.policy,
            "requests": args.requests,
            "seeds": done,
            "rate_rps": rate,
            "rate_rule": "pinned" if args.rate is not None else args.rule,
            "share_learning": not args.own_learning,
            "baseline_goodput_rps_per_server": runs[0]["goodput_rps_per_server"] if runs else None,
            "runs": runs,
            "sweep": probes,
            "wall_s": time.time() - t0,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))

    for sd in seeds if todo else []:  # seed by seed: an interrupted run keeps the seeds done
        for k, res in zip(todo, runner.many(rate, [(k, sd) for k in todo]), strict=True):
            got[k].append(res)
        done.append(sd)
        write()
        console.print(f"  seed {sd} done ({time.time() - t0:.0f} s)")
    if not todo:
        write()
    if runner.pool is not None:
        runner.pool.shutdown()
    _table(console, args, rate, len(done), runs)
    return 0


def _table(
    console: Console, args: argparse.Namespace, rate: float, ns: int, runs: list[dict[str, Any]]
) -> None:
    tab = Table(
        title=f"{args.policy} on {args.scenario} at {rate:.1f} req/s, {args.requests} requests, "
        f"{ns} seed(s); differences against one router at the same seed (± standard error)"
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
            f"{run['goodput_vs_baseline']:.3f} ± {run['goodput_vs_baseline_se']:.3f}",
            f"{run['min_tier_delta_points']:+.2f} ± {run['min_tier_delta_se_points']:.2f} "
            f"({run['worst_tier']})",
            "—"
            if run["min_tier_delta_vs_sync0_points"] is None
            else f"{run['min_tier_delta_vs_sync0_points']:+.2f}",
            " ".join(f"{t} {100 * v:.1f}" for t, v in run["tiers"].items()),
        )
    console.print(tab)


if __name__ == "__main__":
    raise SystemExit(main())
