#!/usr/bin/env python3
"""Overload in the fleet simulator: goodput and the TTFT of served requests as offered
load rises from 0.5× to 3× the goodput rate (docs/policies.md §9).

    scripts/bench_overload.py --json OUT [--plot PNG] [--scenarios a,b] [--policies x,y]
        [--loads 0.5,1,2,3] [--duration S] [--warmup S] [--base SCENARIO=RPS] [--jobs N]

The goodput rate of a scenario (``1×``) is polyserve's: the highest total arrival rate
at which every tier attains ≥ 90 % of its per-token deadlines, found by bisection with
``--base-requests`` requests per probe as ``scripts/bench_policies.py`` does (or given
with ``--base``). Every policy then runs at the same offered rates, ``x × 1×``.

Each run lasts ``warmup + duration + 2 s`` of arrivals; what is measured is the
**steady state**: the requests that arrived in the ``duration`` window after the
warm-up and before the last 2 s (a fleet that starts empty, and the drain after
arrivals stop, would otherwise count work an overloaded fleet cannot do):

* ``goodput_rps_per_server``: those requests that met every per-token deadline, per
  second of the window, per server;
* ``p99_ttft_over_slo``: per tier, the p99 over its *served* requests (finished; a 429
  is not served) of TTFT / the request's own TTFT objective; the worst tier's value
  (``tiers`` has each tier's, with its attainment and the share shed).

Writes ``{"scenarios": {NAME: {"base_rps": r, "servers": n, "policies": {KIND:
{"loads": [{"offered_x", "offered_rps", "goodput_rps_per_server", "p99_ttft_over_slo",
"tiers": {...}, ...}]}}}}}``, prints a table per scenario and the targets (polyserve at
2× and 3×: ≥ 90 % of its goodput at 1×, p99 TTFT of served requests ≤ 1.5× each tier's
objective), and with ``--plot`` a PNG (matplotlib: the optional ``plots`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from slorouter.fleetsim.bound import fluid_reference
from slorouter.fleetsim.fleet import FleetSim, run_once
from slorouter.fleetsim.metrics import OK, REJECTED
from slorouter.fleetsim.scenario import load_scenario
from slorouter.fleetsim.sweep import sweep
from slorouter.policy import registry

SCENARIOS = ("polyserve-conv", "polyserve-code")
POLICIES = ("polyserve", "slo-pack", "least-request")
LOADS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
TAIL_S = 2.0  # arrivals of the last seconds are not measured (their fleet empties after them)
TARGET_GOODPUT = 0.9  # of the goodput at 1×, at 2× and 3×
TARGET_TTFT = 1.5  # p99 TTFT of served requests / the TTFT objective


def base_rate(scenario: str, requests: int) -> float:
    """polyserve's goodput rate (every tier ≥ 90 %), total req/s."""
    scn = load_scenario(scenario)
    guess = 0.8 * fluid_reference(scn).rps_per_server * scn.servers
    g = sweep(lambda r: run_once(scn, "polyserve", r, requests=requests), guess, targets=(0.9,)).goodput[0.9]
    if g is None:
        raise SystemExit(f"{scenario}: polyserve reaches no rate at which every tier attains 90 %")
    return g


def measure(sim: FleetSim, start: float, end: float) -> dict[str, Any]:
    """Steady-state figures over the requests that arrived in ``[start, end)``."""
    wl, rec = sim.wl, sim.records
    arrival = np.asarray(wl.arrival)
    inside = (arrival >= start) & (arrival < end)
    status = np.asarray(rec.status)
    good = np.asarray(rec.dslo, dtype=bool)
    ttft = np.asarray(rec.ttft)
    wait = np.asarray(rec.wait)
    objective = np.asarray([v.slo.ttft_s if v.slo.ttft_s is not None else math.nan for v in wl.variant])
    tier = np.asarray(wl.tier)
    window = end - start
    n = sim.n_servers
    tiers: dict[str, Any] = {}
    worst = 0.0
    for k, t in enumerate(wl.tiers):
        sel = inside & (tier == k)
        arrivals = int(sel.sum())
        served = sel & (status == OK)
        ratio = (ttft / objective)[served]
        ratio = ratio[~np.isnan(ratio)]
        p99 = float(np.percentile(ratio, 99)) if ratio.size else None
        waited = wait[sel & ~np.isnan(wait)]
        tiers[t.name] = {
            "arrivals": arrivals,
            "dslo_attainment": float(good[sel].sum()) / arrivals if arrivals else None,
            "served_share": float(served.sum()) / arrivals if arrivals else None,
            "shed_share": float((sel & (status == REJECTED)).sum()) / arrivals if arrivals else None,
            "p99_ttft_over_slo": p99,
            "p99_queue_wait_s": float(np.percentile(waited, 99)) if waited.size else None,
        }
        if p99 is not None:
            worst = max(worst, p99)
    return {
        "goodput_rps_per_server": float((good & inside).sum()) / window / n,
        "p99_ttft_over_slo": worst,
        "attainment": float((good & inside).sum()) / max(1, int(inside.sum())),
        "window_s": window,
        "tiers": tiers,
    }


def one(scenario: str, policy: str, x: float, rate: float, warmup: float, duration: float) -> dict[str, Any]:
    scn = load_scenario(scenario)
    total = warmup + duration + TAIL_S
    sim = FleetSim(scn, policy, rate=rate, requests=max(100, math.ceil(rate * total)))
    t0 = time.process_time()
    sim.run()
    first = sim.wl.arrival[0]
    last = sim.wl.arrival[-1]
    out = measure(sim, first + warmup, last - TAIL_S)
    out.update(offered_x=x, offered_rps=rate, cpu_s=time.process_time() - t0)
    return out


def plot(path: str, results: dict[str, Any]) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib, which is not installed: pip install 'slorouter[plots]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["scenarios"])
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    for j, name in enumerate(names):
        entry = results["scenarios"][name]
        g_ax, t_ax = axes[0][j], axes[1][j]
        for kind, pol in entry["policies"].items():
            xs = [p["offered_x"] for p in pol["loads"]]
            g_ax.plot(xs, [p["goodput_rps_per_server"] for p in pol["loads"]], marker="o", label=kind)
            t_ax.plot(xs, [p["p99_ttft_over_slo"] for p in pol["loads"]], marker="o", label=kind)
        cap = entry.get("polyserve_goodput_at_1x")
        if cap:
            g_ax.axhline(TARGET_GOODPUT * cap, color="grey", ls=":", label="90 % of polyserve at 1×")
        t_ax.axhline(TARGET_TTFT, color="grey", ls=":", label="1.5× objective")
        t_ax.set_yscale("log")
        offered = entry["base_rps"] / entry["servers"]
        g_ax.set_title(f"{name}: goodput (1× offered = {offered:.2f} req/s/server)")
        g_ax.set_ylabel("good requests / s / server")
        t_ax.set_title(f"{name}: p99 TTFT of served requests (worst tier)")
        t_ax.set_ylabel("p99 TTFT / TTFT objective")
        for ax in (g_ax, t_ax):
            ax.set_xlabel("offered load (× goodput rate)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="OUT", required=True, help="write the results here")
    ap.add_argument("--plot", metavar="PNG", help="also draw goodput and p99 TTFT vs offered load")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument(
        "--loads", default=",".join(f"{x:g}" for x in LOADS), help="multiples of the goodput rate"
    )
    ap.add_argument(
        "--warmup", type=float, default=60.0, help="seconds of arrivals not measured (default 60)"
    )
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals measured (default 60)")
    ap.add_argument("--base", action="append", default=[], metavar="SCENARIO=RPS", help="the 1× rate (total)")
    ap.add_argument("--base-requests", type=int, default=20000, help="requests per probe finding 1×")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes")
    args = ap.parse_args(argv)
    console = Console()
    scns = [s for s in args.scenarios.split(",") if s]
    pols = [p for p in args.policies.split(",") if p]
    bad = [p for p in pols if p not in registry.kinds()]
    if bad:
        console.print(f"[red]unknown policies {bad}; known: {list(registry.kinds())}[/red]")
        return 2
    try:
        loads = [float(x) for x in args.loads.split(",") if x]
        given = {k: float(v) for k, v in (b.split("=", 1) for b in args.base)}
    except ValueError:
        console.print("[red]--loads takes numbers (0.5,1,2); --base takes SCENARIO=RPS[/red]")
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            console.print("[red]--plot needs matplotlib: pip install 'slorouter[plots]'[/red]")
            return 2
    t0 = time.time()
    bases = {s: given[s] for s in scns if s in given}
    todo = [s for s in scns if s not in bases]
    with ProcessPoolExecutor(max(1, min(args.jobs, len(todo)))) as ex:
        for s, g in zip(todo, ex.map(base_rate, todo, [args.base_requests] * len(todo)), strict=True):
            bases[s] = g
    for s in scns:
        console.print(f"[dim]{s}: 1× = {bases[s]:.1f} req/s ({time.time() - t0:.0f} s)[/dim]")
    jobs = [(s, p, x) for s in scns for p in pols for x in loads]
    results: dict[tuple[str, str, float], dict[str, Any]] = {}

    def run(s: str, p: str, x: float) -> tuple[str, str, float, float, float, float]:
        return (s, p, x, x * bases[s], args.warmup, args.duration)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            futs = {ex.submit(one, *run(*j)): j for j in jobs}
            for f, key in futs.items():
                results[key] = f.result()
                console.print(f"[dim]{key}: done ({time.time() - t0:.0f} s)[/dim]")
    else:
        for j in jobs:
            results[j] = one(*run(*j))
            console.print(f"[dim]{j}: done ({time.time() - t0:.0f} s)[/dim]")
    out: dict[str, Any] = {
        "scenarios": {},
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "wall_s": time.time() - t0,
    }
    ok = True
    for s in scns:
        n = load_scenario(s).servers
        entry: dict[str, Any] = {"base_rps": bases[s], "servers": n, "policies": {}}
        for p in pols:
            entry["policies"][p] = {"loads": [results[(s, p, x)] for x in loads]}
        cap = next(
            (
                r["goodput_rps_per_server"]
                for r in entry["policies"].get("polyserve", {}).get("loads", ())
                if r["offered_x"] == 1.0
            ),
            None,
        )
        entry["polyserve_goodput_at_1x"] = cap
        out["scenarios"][s] = entry
        t = Table(title=f"{s}: {n} servers, 1× = {bases[s] / n:.2f} req/s/server (polyserve's goodput rate)")
        t.add_column("offered")
        for p in pols:
            t.add_column(f"{p} goodput/server", justify="right")
            t.add_column("p99 TTFT/SLO", justify="right")
        for i, x in enumerate(loads):
            row = [f"{x:g}×"]
            for p in pols:
                r = entry["policies"][p]["loads"][i]
                row += [f"{r['goodput_rps_per_server']:.2f}", f"{r['p99_ttft_over_slo']:.2f}"]
            t.add_row(*row)
        console.print(t)
        if cap:
            for r in entry["policies"].get("polyserve", {}).get("loads", ()):
                if r["offered_x"] in (2.0, 3.0):
                    g_ok = r["goodput_rps_per_server"] >= TARGET_GOODPUT * cap
                    t_ok = r["p99_ttft_over_slo"] <= TARGET_TTFT
                    ok = ok and g_ok and t_ok
                    console.print(
                        f"  polyserve at {r['offered_x']:g}×: goodput {r['goodput_rps_per_server']:.2f} = "
                        f"{r['goodput_rps_per_server'] / cap:.1%} of 1× ({'met' if g_ok else 'NOT met'}), "
                        f"p99 TTFT/SLO {r['p99_ttft_over_slo']:.2f} ({'met' if t_ok else 'NOT met'})"
                    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    if args.plot:
        plot(args.plot, out)
        console.print(f"plot: {args.plot}")
    console.print(f"targets {'met' if ok else 'NOT all met'}; wrote {args.json} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
