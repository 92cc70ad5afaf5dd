"""``slorouter simulate``: run a policy offline on a simulated fleet (no HTTP).

    slorouter simulate --scenario polyserve-conv --policy polyserve [--servers N]
                       [--rate R | --sweep] [--requests N] [--json OUT] [--misses OUT]
                       [--autoscale scaler|keda-queue|utilisation|wva-spare [--provisioning-delay S]]

Prints per-tier DSLO and mean-TPOT attainment, TTFT/TPOT percentiles, goodput and cost
(a rich table); with ``--sweep`` the goodput (highest rate where every tier attains
≥ 90 %, and ≥ 99 %) found by bisection, next to the scenario's upper bound (no router
exceeds it in a long run, :mod:`slorouter.fleetsim.upper_bound`) and its fluid reference; with
``--misses`` (one run) every request that missed, as JSON lines, grouped in a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slorouter.engine.waiting import SCHEDULING
from slorouter.fleetsim.bound import auto_bins, fluid_reference
from slorouter.fleetsim.events import ProgressFn
from slorouter.fleetsim.fleet import SimOptions, SimResult, run_once
from slorouter.fleetsim.replicas import ReplicaOptions
from slorouter.fleetsim.scaling import SCALERS, ScalingOptions
from slorouter.fleetsim.scenario import Scenario, ScenarioError, load_scenario
from slorouter.fleetsim.sweep import Probe, sweep
from slorouter.fleetsim.upper_bound import upper_bound
from slorouter.fleetsim.workload import check_slos
from slorouter.policy import registry
from slorouter.policy.base import ParamError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", required=True, help="scenario YAML path or name in config/scenarios/")
    p.add_argument("--policy", required=True, help=f"policy kind ({', '.join(registry.kinds())})")
    p.add_argument("--servers", type=int, help="fleet size (default: the scenario's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--rate", type=float, help="total arrival rate, requests/s (default: 80%% of the fluid reference)"
    )
    g.add_argument("--sweep", action="store_true", help="find the goodput at 90 %% and 99 %% attainment")
    p.add_argument("--requests", type=int, help="requests per run (default: the scenario's)")
    p.add_argument("--seed", type=int, help="seed (default: the scenario's)")
    p.add_argument(
        "--engine-scheduling",
        choices=SCHEDULING,
        help="the engines' waiting queue, as vLLM's --scheduling-policy (default: the scenario's "
        "engine.scheduling, fcfs): priority orders it by each request's due time (EDF)",
    )
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="policy param (repeatable)")
    p.add_argument("--no-learn", action="store_true", help="freeze the latency/length models at their priors")
    p.add_argument("--sync-tokens", type=int, default=64, help="tracker token updates every N tokens")
    p.add_argument("--latency-quantile", type=float, default=0.9, help="quantile of the latency model")
    p.add_argument("--length-quantile", type=float, default=0.9, help="quantile of the length model")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.add_argument(
        "--misses",
        metavar="OUT",
        help="with --rate: write every request that missed its SLO as JSON lines (lengths, cause, "
        "queue wait, TTFT, server, load at dispatch, the policy's reason) and print them grouped",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="router replicas sharing the load picture (arrivals spread at random)",
    )
    p.add_argument(
        "--sync-ms",
        type=float,
        default=100.0,
        help="with --replicas: each replica publishes and reads the shared rows every this many ms "
        "(0: before every decision)",
    )
    p.add_argument(
        "--event-ms",
        type=float,
        default=25.0,
        help="with --replicas: a replica whose own placements or departures changed its row "
        "exchanges this long after its last exchange, not only at the tick (0: ticks only)",
    )
    p.add_argument("--no-quota", action="store_true", help="with --replicas: no herding guard")
    p.add_argument(
        "--no-sync", action="store_true", help="with --replicas: replicas never see each other's load"
    )
    p.add_argument(
        "--own-learning",
        action="store_true",
        help="with --replicas: each replica's latency model learns only from its own outcomes "
        "(default: from every replica's, published with the rows)",
    )
    p.add_argument(
        "--autoscale",
        choices=SCALERS,
        help="the fleet scales during the run: the router's per-tier scaler (defaults) or a baseline "
        "(--servers is then the starting fleet; docs/autoscaling.md §6)",
    )
    p.add_argument(
        "--provisioning-delay",
        type=float,
        default=120.0,
        help="with --autoscale: seconds from asking for a server to its first request",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _param(kv: str) -> tuple[str, Any]:
    if "=" not in kv:
        raise ValueError(f"--param {kv!r}: expected KEY=VALUE")
    k, v = kv.split("=", 1)
    for conv in (int, float):
        try:
            return k, conv(v)
        except ValueError:
            pass
    low = v.lower()
    if low in ("true", "false"):
        return k, low == "true"
    return k, v


def _fmt(x: float | None, scale: float = 1.0, nd: int = 1) -> str:
    return "-" if x is None else f"{x * scale:.{nd}f}"


def _table(console: Console, s: dict[str, Any], title: str) -> None:
    t = Table(title=title)
    for c in (
        "tier",
        "arrivals",
        "DSLO att.",
        "mean-TPOT att.",
        "misses TTFT/pace/backlog/rej/unf",
        "wait p99 ms",
        "gain %",
    ):
        t.add_column(c, justify="right")
    for c in ("TTFT p50/p90/p99 ms", "TPOT p50/p90/p99 ms"):
        t.add_column(c, justify="right")
    rows = [*s["tiers"].items(), ("overall", s["overall"])]
    for name, v in rows:
        tt, tp = v["ttft_s"], v["tpot_s"]
        t.add_row(
            name,
            str(v["arrivals"]),
            _fmt(v["dslo_attainment"], 100, 2) + " %",
            _fmt(v["mean_tpot_attainment"], 100, 2) + " %",
            "/".join(
                str(x)
                for x in (
                    v["misses"]["ttft"],
                    v["misses"]["pace"],
                    v["misses"]["backlog"],
                    v["rejected"],
                    v["unfinished"] + v["errors"],
                )
            ),
            _fmt(v["queue_wait_s"]["p99"], 1e3, 0),
            _fmt(v.get("service_gain_ratio"), 100, 1),
            "/".join(_fmt(tt[k], 1e3, 0) for k in ("p50", "p90", "p99")),
            "/".join(_fmt(tp[k], 1e3, 1) for k in ("p50", "p90", "p99")),
        )
    console.print(t)
    o = s["overall"]
    console.print(
        f"goodput {_fmt(o['goodput_rps_per_server'], 1, 2)} good req/s per server · "
        f"server-s per good request {_fmt(o['server_seconds_per_good'], 1, 3)} "
        f"(busy servers only {_fmt(o['busy_server_seconds_per_good'], 1, 3)})"
    )
    if o.get("service_gain") is not None:
        console.print(
            f"service gain {o['service_gain']:,.0f} of {o['service_gain_max']:,.0f} "
            f"({_fmt(o['service_gain_ratio'], 100, 1)} %; prompt x1 + output x8 tokens, x tier weight)"
        )


def _miss_table(console: Console, rows: list[dict[str, Any]], top: int = 15) -> None:
    """The misses grouped by tier, cause, the policy's reason and the server's tier."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["tier"], r["cause"], r["decision"] or "-", r["backend_tier"] or "-")
        groups.setdefault(key, []).append(r)
    t = Table(title=f"misses by tier, cause and decision ({len(rows)} requests; the {top} largest groups)")
    for c in ("tier", "cause", "decision", "server tier", "requests", "prompt p50/max", "wait p50/max ms"):
        t.add_column(c, justify="left" if c in ("decision",) else "right")
    for (tier, cause, why, st), g in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]:
        prompts = sorted(r["prompt_tokens"] for r in g)
        waits = sorted(r["queue_wait_s"] for r in g if r["queue_wait_s"] is not None)
        wait = f"{waits[len(waits) // 2] * 1e3:.0f}/{waits[-1] * 1e3:.0f}" if waits else "-"
        t.add_row(tier, cause, why, st, str(len(g)), f"{prompts[len(prompts) // 2]}/{prompts[-1]}", wait)
    console.print(t)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _ratio(x: float | None, of: float | None) -> float | None:
    return None if x is None or of is None or not 0 < of < math.inf else x / of


def _result_json(r: SimResult, rate: float) -> dict[str, Any]:
    return {
        "rate_rps": rate,
        "wall_s": r.wall_s,
        "cpu_s": r.cpu_s,
        "decisions": r.decisions,
        "steps": r.steps,
        **r.summary,
    }


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=False, width=None if sys.stdout.isatty() else 132)
    err = Console(stderr=True)
    try:
        scn: Scenario = load_scenario(args.scenario)
        check_slos(scn)
        if args.engine_scheduling is not None:
            scn = replace(scn, scheduling=args.engine_scheduling)
    except ScenarioError as e:
        err.print(f"[red]error:[/red] {e}")
        return 2
    if args.policy not in registry.REGISTRY:
        err.print(
            f"[red]error:[/red] unknown policy {args.policy!r}; choose one of {', '.join(registry.kinds())}"
        )
        return 2
    try:
        params = dict(_param(kv) for kv in args.param)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        return 2
    servers = args.servers or scn.servers
    if servers < 1 or (args.requests is not None and args.requests < 1):
        err.print("[red]error:[/red] --servers and --requests must be >= 1")
        return 2
    if args.rate is not None and args.rate <= 0:
        err.print("[red]error:[/red] --rate must be > 0 (requests per second, all tiers together)")
        return 2
    if args.misses and args.sweep:
        err.print("[red]error:[/red] --misses logs one run: give --rate R (or neither), not --sweep")
        return 2
    for flag, path in (("--json", args.json), ("--misses", args.misses)):
        if path and not Path(path).parent.is_dir():
            err.print(
                f"[red]error:[/red] {flag} {path}: no such directory "
                f"{str(Path(path).parent)!r}; create it first"
            )
            return 2
    fb = fluid_reference(scn)
    ub = {a: upper_bound(scn, a) for a in (0.9, 0.99)}
    if not (0 < args.latency_quantile < 1 and 0 < args.length_quantile < 1):
        err.print("[red]error:[/red] --latency-quantile and --length-quantile must be in (0, 1)")
        return 2
    if args.replicas < 1 or args.sync_ms < 0 or args.event_ms < 0:
        err.print("[red]error:[/red] --replicas must be >= 1, --sync-ms and --event-ms >= 0")
        return 2
    if args.replicas == 1 and (args.no_sync or args.no_quota or args.own_learning):
        err.print(
            "[red]error:[/red] --no-sync, --no-quota and --own-learning apply to --replicas R with R >= 2"
        )
        return 2
    scaling = None
    if args.autoscale is not None:
        if args.sweep or args.replicas > 1 or args.provisioning_delay < 0:
            err.print(
                "[red]error:[/red] --autoscale runs one fleet at one rate with one router: not with "
                "--sweep or --replicas; --provisioning-delay must be >= 0"
            )
            return 2
        scaling = ScalingOptions(args.autoscale, args.provisioning_delay)
    opts = SimOptions(
        scaling=scaling,
        sync_tokens=max(1, args.sync_tokens),
        learn=not args.no_learn,
        latency_quantile=args.latency_quantile,
        length_quantile=args.length_quantile,
        miss_log=bool(args.misses),
        replicas=ReplicaOptions(
            args.replicas,
            args.sync_ms,
            quota=not args.no_quota,
            sync=not args.no_sync,
            event_ms=args.event_ms,
            share_learning=not args.own_learning,
        ),
    )
    n_req = args.requests or scn.workload.requests
    bins = scn.bins if scn.bins is not None and servers == scn.servers else auto_bins(scn, servers, fb)
    console.print(
        f"[bold]{scn.name}[/bold] · policy [bold]{args.policy}[/bold] · {servers} servers "
        f"({', '.join(f'{k}:{v}' for k, v in bins.items())}) · {scn.profile.name}"
        f"{'' if scn.scheduling == 'fcfs' else f' ({scn.scheduling} scheduling)'} · {n_req} requests · "
        f"upper bound {ub[0.9].rps_per_server:.2f} (≥ 90 %) / {ub[0.99].rps_per_server:.2f} (≥ 99 %), "
        f"fluid reference {fb.rps_per_server:.2f} req/s per server"
    )
    show = not args.no_progress and sys.stderr.isatty()

    def one(rate: float) -> SimResult:
        def go(progress: ProgressFn | None = None) -> SimResult:
            return run_once(
                scn,
                args.policy,
                rate,
                servers=servers,
                requests=n_req,
                params=params,
                seed=args.seed,
                options=opts,
                progress=progress,
            )

        try:
            if not show:
                return go()
            with Progress(
                TextColumn(f"rate {rate:.1f} req/s"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as prog:
                task = prog.add_task("sim", total=n_req)
                return go(lambda i, n: prog.update(task, completed=i))
        except ParamError as e:
            raise SystemExit(f"error: policy params: {e}") from None

    out: dict[str, Any] = {
        "scenario": scn.name,
        "policy": args.policy,
        "servers": servers,
        "requests": n_req,
        "upper_bound": {f"{a:g}": u.to_json() for a, u in ub.items()},
        "fluid_reference": fb.to_json(),
        "params": params,
    }
    if scn.scheduling != "fcfs":  # (fcfs, the default, leaves the JSON as it was)
        out["engine_scheduling"] = scn.scheduling
    try:
        if args.sweep:
            guess = 0.8 * fb.rps_per_server * servers

            def note(p: Probe) -> None:
                console.print(
                    f"  probe {p.rate:8.2f} req/s ({p.rate / servers:6.2f}/server): min tier "
                    f"{p.min_tier * 100:6.2f} %, overall {p.overall * 100:6.2f} % "
                    f"[dim]({p.result.cpu_s:.1f} s cpu)[/dim]"
                )

            sw = sweep(one, guess, on_probe=note)
            t = Table(title=f"goodput of {args.policy} on {scn.name}")
            for c in ("criterion", "rate req/s", "req/s per server", "of upper bound", "of fluid reference"):
                t.add_column(c, justify="right")
            for label, d in (("every tier", sw.goodput), ("overall", sw.goodput_overall)):
                for tgt, v in d.items():
                    per = None if v is None else v / servers
                    # the upper bound is for every tier's attainment (each tier may drop its share)
                    u = ub.get(tgt) if label == "every tier" else None
                    t.add_row(
                        f"{label} ≥ {tgt * 100:g} %",
                        _fmt(v, 1, 2),
                        _fmt(per, 1, 3),
                        _pct(_ratio(per, None if u is None else u.rps_per_server)),
                        _pct(_ratio(per, fb.rps_per_server)),
                    )
            console.print(t)
            out["sweep"] = sw.to_json(servers)
        else:
            rate = args.rate or scn.workload.rate_rps or 0.8 * fb.rps_per_server * servers
            r = one(rate)
            _table(console, r.summary, f"{args.policy} at {rate:.1f} req/s ({rate / servers:.2f} per server)")
            console.print(
                f"[dim]{r.decisions} decisions, {r.steps} engine steps, {r.wall_s:.1f} s wall, "
                f"{r.cpu_s:.1f} s cpu[/dim]"
            )
            auto = r.summary.get("autoscale")
            if auto is not None:
                console.print(
                    f"autoscale ({auto['scaler']}, {auto['provisioning_delay_s']:g} s to start a server): "
                    f"{auto['server_seconds']:,.0f} server-s provisioned (mean {auto['mean_servers']:.2f}, "
                    f"peak {auto['peak_servers']} servers), {auto['decisions']} decisions, "
                    f"{auto['servers_asked']} asked, {auto['servers_released']} released, "
                    f"{auto['servers_moved']} moved · server-s per good request "
                    f"{_fmt(r.summary['overall']['server_seconds_per_good'], 1, 4)}"
                )
            out["result"] = _result_json(r, rate)
            if args.misses and r.misses is not None:
                with Path(args.misses).open("wb") as f:
                    for row in r.misses:
                        f.write(json.dumps(row).encode() + b"\n")
                _miss_table(console, r.misses)
                console.print(f"wrote {len(r.misses)} misses to {args.misses}")
    except SystemExit as e:
        err.print(f"[red]{e}[/red]")
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0
