#!/usr/bin/env python3
"""Every policy on every shipped scenario: goodput per server (highest rate at which every
tier attains ≥ 90 %, and ≥ 99 %, of its per-token deadlines), against the scenario's upper
bound (no router exceeds it in a long run) and its fluid reference.

    scripts/bench_policies.py --json OUT [--scenarios a,b] [--policies x,y] [--requests N] [--jobs N]

Writes ``{"scenarios": {NAME: {...}}}`` with, per scenario: ``upper_bound_rps_per_server``
(≥ 90 %) and ``upper_bound99_rps_per_server`` (≥ 99 %) with their derivation
(``upper_bound``), ``fluid_reference_rps_per_server`` (``fluid_reference``);
``best_slo_blind`` (the best of round-robin, least-request, least-tokens and power-of-two
at ≥ 90 %; ``best_slo_blind_99`` at ≥ 99 %), ``polyserve_vs_best_slo_blind`` and
``polyserve_vs_best_slo_blind_99``; ``best_slo_aware`` (slo-pack, static-partition) and
``polyserve_vs_best_slo_aware`` / ``_99``; ``best_baseline`` (every non-polyserve entry)
and ``polyserve_vs_best_baseline``; ``polyserve_vs_upper_bound`` (and ``_99``),
``polyserve_vs_fluid_reference``; ``finite_run_bound_rps_per_server`` (and ``99``: the most
a run of this many requests can pass — above the long-run bound for short runs, whose
servers start empty and finish late work in the drain); ``policies: {kind: {"goodput_rps_per_server": g,
"goodput99_rps_per_server": g99, ...}}``. It prints a table per scenario and the ratios.
``polyserve:pack`` is polyserve with ``placement: pack`` (what
an autoscaled fleet runs; its cost is the busy-server column); ``polyserve:static-bins`` is
polyserve with ``rebalance: false`` (bins fixed as configured);
``static-partition:by-share`` splits the servers by request share instead of by the
fluid model's cost (``static-partition`` proper gets the cost-optimal split). The best
baseline is the best of every non-polyserve entry except the ablation
``slo-pack+late-fill`` (slo-pack with polyserve's overload control, ``late_fill`` 0.25),
against which ``polyserve_vs_slo_pack_late_fill`` is reported separately;
``polyserve:late-fill-1`` is polyserve without it.

Scenarios with multi-call workflows (``mixed``) are compared by **service gain** instead
(:func:`gain_entry`): at the rate where least-request attains 50 % of all units of work,
``scenarios.<name>.policies.<kind>.service_gain`` (and per-class attainment) for tempo,
polyserve, slo-pack, least-request (which never holds a request back: FCFS at the
engines) and ``least-request+edf`` (the same balancer, every engine scheduling by
priority — vLLM's ``--scheduling-policy priority`` — with each request's due time as its
priority: an EDF queue at each engine; ``tempo+edf`` and ``polyserve+edf``, the router
policies on the same engines, when named in ``--policies``), with ``tempo_vs_least_request``,
``tempo_vs_polyserve`` and ``tempo_vs_least_request_edf``; and the ceiling:
``ceiling_vs_least_request`` (``ceiling_vs_polyserve``) = 1 / that policy's
``service_gain_ratio``, the most any policy could have over it at this load (every request
meeting its objective).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slorouter.fleetsim.bound import fluid_reference
from slorouter.fleetsim.fleet import run_once
from slorouter.fleetsim.scenario import SCENARIO_DIR, Scenario, load_scenario
from slorouter.fleetsim.sweep import sweep
from slorouter.fleetsim.upper_bound import upper_bound
from slorouter.fleetsim.upper_bound_run import finite_bound, run_work
from slorouter.fleetsim.workload import generate
from slorouter.policy import registry

# every shipped scenario with a constant rate (those with an arrival envelope are for a
# fleet that scales: scripts/bench_autoscale.py), the three the policy was developed on first
FIRST = ("polyserve-conv", "polyserve-code", "chat-batch")


def _has_workflows(scn: Scenario) -> bool:
    return any(t.workflow is not None for t in scn.tiers)


SCENARIOS = (
    *FIRST,
    *sorted(
        p.stem
        for p in SCENARIO_DIR.glob("*.yaml")
        if p.stem not in FIRST
        and load_scenario(str(p)).workload.envelope is None
        and not _has_workflows(load_scenario(str(p)))
    ),
)
# scenarios compared by service gain at one load (multi-call workflows: no per-tier goodput
# bound applies); see gain_entry
GAIN_SCENARIOS = tuple(
    sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml") if _has_workflows(load_scenario(str(p))))
)
GAIN_POLICIES = ("tempo", "polyserve", "slo-pack", "least-request", "least-request+edf")
GAIN_TARGET = 0.5  # least-request's overall attainment at the compared load
GAIN_WINDOW_S = 30.0  # seconds of arrivals per probe (--requests overrides)
SLO_BLIND = ("round-robin", "least-request", "least-tokens", "power-of-two")
SLO_AWARE = ("slo-pack", "static-partition")
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "polyserve:pack": ("polyserve", {"placement": "pack"}),
    # polyserve with its bins fixed as configured (no re-assignment as load shifts)
    "polyserve:static-bins": ("polyserve", {"rebalance": False}),
    # the same policy on a fleet split by request share instead of by fluid cost: how a
    # user would size separate deployments without the fluid model
    "static-partition:by-share": ("static-partition", {}),
    # ablations of the overload control (a late request takes only spare room): polyserve
    # without it, and the slo-pack baseline with it — not a baseline users run, so never
    # the "best baseline"; it says how much of polyserve's lead is the bins
    "polyserve:late-fill-1": ("polyserve", {"late_fill": 1.0}),
    "slo-pack+late-fill": ("slo-pack", {"late_fill": 0.25}),
    # least-request with an EDF queue at every engine (ENGINE_SCHEDULING): what a user
    # gets from vLLM's priority scheduling with each request's due time as its priority
    "least-request+edf": ("least-request", {}),
    # the router policies on the same EDF engines (service gain, when named)
    "tempo+edf": ("tempo", {}),
    "polyserve+edf": ("polyserve", {}),
}
# variants whose engines schedule other than fcfs (the scenario's engine.scheduling)
ENGINE_SCHEDULING = dict.fromkeys(("least-request+edf", "tempo+edf", "polyserve+edf"), "priority")
# service-gain variants run only when named in --policies
GAIN_EXTRA = ("tempo+edf", "polyserve+edf")
# variants compared by service gain only (not in the default goodput comparison)
GAIN_ONLY = {"least-request+edf", *GAIN_EXTRA}
BY_SHARE = {"static-partition:by-share"}
ABLATIONS = {"slo-pack+late-fill"}


def by_share(scn: Scenario) -> Scenario:
    """The scenario with servers per tier ∝ share (largest remainder, ≥ 1 each)."""
    tot = sum(t.share for t in scn.tiers)
    exact = {t.name: scn.servers * t.share / tot for t in scn.tiers}
    bins = {k: max(1, int(v)) for k, v in exact.items()}
    while sum(bins.values()) > scn.servers:
        k = max(bins, key=lambda x: bins[x] - exact[x])
        bins[k] -= 1
    while sum(bins.values()) < scn.servers:
        k = max(bins, key=lambda x: exact[x] - bins[x])
        bins[k] += 1
    return replace(scn, bins=bins)


def policies() -> list[str]:
    return [*registry.kinds(), *VARIANTS]


def variant_scenario(scn: Scenario, name: str) -> Scenario:
    """The scenario as variant ``name`` runs it (servers split by share, engine scheduling)."""
    if name in BY_SHARE:
        scn = by_share(scn)
    if name in ENGINE_SCHEDULING:
        scn = replace(scn, scheduling=ENGINE_SCHEDULING[name])
    return scn


def one(scenario: str, name: str, requests: int | None) -> dict[str, Any]:
    scn = variant_scenario(load_scenario(scenario), name)
    kind, params = VARIANTS.get(name, (name, {}))
    fb = fluid_reference(scn)
    n = scn.servers
    t0 = time.process_time()
    sw = sweep(
        lambda r: run_once(scn, kind, r, requests=requests, params=params), 0.8 * fb.rps_per_server * n
    )
    cpu = time.process_time() - t0
    g = sw.goodput.get(0.9)
    best = None
    if g is not None:
        best = next((p for p in sw.probes if abs(p.rate - g) < 1e-9), None)
    o = best.result.summary["overall"] if best else {}
    return {
        "goodput_rps_per_server": None if g is None else g / n,
        "goodput99_rps_per_server": None if sw.goodput.get(0.99) is None else sw.goodput[0.99] / n,  # type: ignore[operator]
        "goodput_overall_rps_per_server": None
        if sw.goodput_overall.get(0.9) is None
        else sw.goodput_overall[0.9] / n,  # type: ignore[operator]
        "server_seconds_per_good": o.get("server_seconds_per_good"),
        "busy_server_seconds_per_good": o.get("busy_server_seconds_per_good"),
        "at_goodput": None
        if best is None
        else {
            "tiers_dslo_attainment": {
                k: v["dslo_attainment"] for k, v in best.result.summary["tiers"].items()
            },
            "overall_dslo_attainment": o.get("dslo_attainment"),
            "overall_mean_tpot_attainment": o.get("mean_tpot_attainment"),
            "ttft_s": o.get("ttft_s"),
            "tpot_s": o.get("tpot_s"),
        },
        "probes": len(sw.probes),
        "cpu_s": cpu,
        "kind": kind,
        "params": params,
        "bins": dict(scn.bins) if scn.bins is not None else "auto",
        "engine_scheduling": scn.scheduling,
    }


def _ratio(
    g: float | None, other: dict[str, Any] | None, key: str = "goodput_rps_per_server"
) -> float | None:
    o = None if other is None else other.get(key)
    return None if g is None or not o else g / o


def _best(pol: dict[str, dict[str, Any]], kinds: tuple[str, ...], key: str) -> str | None:
    """The kind among ``kinds`` with the highest ``key`` (None when none of them ran)."""
    ran = [k for k in kinds if k in pol]
    return max(ran, key=lambda k: pol[k][key] or 0.0) if ran else None


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def summarize(s: str, pol: dict[str, dict[str, Any]], requests: int | None) -> dict[str, Any]:
    """The per-scenario entry of the JSON (see the module docs)."""
    scn = load_scenario(s)
    fb = fluid_reference(scn)
    ub90, ub99 = upper_bound(scn, 0.9), upper_bound(scn, 0.99)
    rw = run_work(scn, generate(scn, 1.0, requests), 1.0)
    g90, g99 = "goodput_rps_per_server", "goodput99_rps_per_server"
    base = {p: v[g90] or 0.0 for p, v in pol.items() if not p.startswith("polyserve") and p not in ABLATIONS}
    best = max(base, key=lambda k: base[k]) if base else None
    ps = pol.get("polyserve", {})
    blind, blind99 = _best(pol, SLO_BLIND, g90), _best(pol, SLO_BLIND, g99)
    aware, aware99 = _best(pol, SLO_AWARE, g90), _best(pol, SLO_AWARE, g99)
    return {
        "upper_bound_rps_per_server": ub90.rps_per_server,
        "upper_bound99_rps_per_server": ub99.rps_per_server,
        "upper_bound": {"0.9": ub90.to_json(), "0.99": ub99.to_json()},
        # what a run of this many requests can pass at most (servers start empty, work
        # due after the last arrival is done in the drain): above the long-run bound
        # when the runs are short
        "finite_run_bound_rps_per_server": finite_bound(rw, scn.servers, 0.9),
        "finite_run_bound99_rps_per_server": finite_bound(rw, scn.servers, 0.99),
        "fluid_reference_rps_per_server": fb.rps_per_server,
        "fluid_reference": fb.to_json(),
        "servers": scn.servers,
        "best_slo_blind": blind,
        "best_slo_blind_99": blind99,
        "polyserve_vs_best_slo_blind": _ratio(ps.get(g90), pol.get(blind or "")),
        "polyserve_vs_best_slo_blind_99": _ratio(ps.get(g99), pol.get(blind99 or ""), g99),
        "best_slo_aware": aware,
        "best_slo_aware_99": aware99,
        "polyserve_vs_best_slo_aware": _ratio(ps.get(g90), pol.get(aware or "")),
        "polyserve_vs_best_slo_aware_99": _ratio(ps.get(g99), pol.get(aware99 or ""), g99),
        "best_baseline": best,
        "polyserve_vs_best_baseline": _ratio(ps.get(g90), pol.get(best or "")),
        "polyserve_vs_upper_bound": _div(ps.get(g90), ub90.rps_per_server),
        "polyserve_vs_upper_bound_99": _div(ps.get(g99), ub99.rps_per_server),
        "polyserve_vs_fluid_reference": _div(ps.get(g90), fb.rps_per_server),
        "polyserve_vs_slo_pack_late_fill": _ratio(ps.get(g90), pol.get("slo-pack+late-fill")),
        "policies": pol,
    }


def _f(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}x"


def report(console: Console, s: str, e: dict[str, Any]) -> None:
    scn = load_scenario(s)
    ub, ub99, fr = (
        e["upper_bound_rps_per_server"],
        e["upper_bound99_rps_per_server"],
        e["fluid_reference_rps_per_server"],
    )
    t = Table(
        title=f"{s}: {scn.servers} servers, {scn.profile.name}, upper bound {ub:.2f} (≥90%) / "
        f"{ub99:.2f} (≥99%), fluid reference {fr:.2f} req/s/server"
    )
    for c in (
        "policy",
        "goodput/server (every tier ≥90%)",
        "≥99%",
        "overall ≥90%",
        "of upper bound",
        "of fluid ref.",
        "busy server-s/good",
    ):
        t.add_column(c, justify="right")
    for p, v in sorted(e["policies"].items(), key=lambda kv: -(kv[1]["goodput_rps_per_server"] or 0)):
        g = v["goodput_rps_per_server"]
        t.add_row(
            p,
            _f(g),
            _f(v["goodput99_rps_per_server"]),
            _f(v["goodput_overall_rps_per_server"]),
            "-" if g is None else f"{100 * g / ub:.1f} %",
            "-" if g is None else f"{100 * g / fr:.1f} %",
            _f(v["busy_server_seconds_per_good"], 3),
        )
    console.print(t)
    console.print(
        f"polyserve vs best SLO-blind ({e['best_slo_blind']} / {e['best_slo_blind_99']}): "
        f"{_x(e['polyserve_vs_best_slo_blind'])} at ≥90 %, "
        f"{_x(e['polyserve_vs_best_slo_blind_99'])} at ≥99 % · "
        f"vs best SLO-aware ({e['best_slo_aware']} / {e['best_slo_aware_99']}): "
        f"{_x(e['polyserve_vs_best_slo_aware'])}, {_x(e['polyserve_vs_best_slo_aware_99'])}"
    )
    r1, r2 = e["polyserve_vs_upper_bound"], e["polyserve_vs_upper_bound_99"]
    console.print(
        f"polyserve vs best baseline ({e['best_baseline']}): {_x(e['polyserve_vs_best_baseline'])} · "
        f"vs upper bound: {'-' if r1 is None else f'{100 * r1:.1f} %'} (≥90 %), "
        f"{'-' if r2 is None else f'{100 * r2:.1f} %'} (≥99 %)"
    )
    r3 = e["polyserve_vs_slo_pack_late_fill"]
    if r3 is not None:
        console.print(f"polyserve vs slo-pack with the same overload control: {r3:.3f}x")
    over = [p for p, v in e["policies"].items() if (v["goodput_rps_per_server"] or 0) > ub]
    if over:
        console.print(
            f"[yellow]{', '.join(over)} above the long-run upper bound: runs this short pass more "
            f"(a run of this length can pass up to {e['finite_run_bound_rps_per_server']:.2f} "
            "req/s/server); give more --requests[/yellow]"
        )


def gain_entry(s: str, pols: list[str], requests: int | None, console: Console) -> dict[str, Any]:
    """Service gain and per-class attainment of ``pols`` at the rate where least-request
    (which never holds a request back: first come, first served at the engines) attains
    :data:`GAIN_TARGET` of all units of work (bisection on the rate, 8 probes)."""
    scn = load_scenario(s)

    def n_at(rate: float) -> int:
        # a fixed arrival window, not a fixed count: with a count, a higher rate only
        # compresses the same work into a burst the drain then serves (loose deadlines
        # made least-request's attainment level off at 0.58 whatever the rate)
        return requests if requests is not None else max(1000, round(rate * GAIN_WINDOW_S))

    def att(rate: float) -> tuple[float, Any]:
        r = run_once(scn, "least-request", rate, requests=n_at(rate))
        a = r.summary["overall"]["dslo_attainment"] or 0.0
        console.print(f"[dim]{s} least-request at {rate:.1f}/s: attainment {a:.3f}[/dim]")
        return a, r

    lo, hi = 0.0, float(scn.workload.rate_rps or 100.0)
    for _ in range(5):
        if att(hi)[0] <= GAIN_TARGET:
            break
        lo, hi = hi, 2 * hi
    else:
        raise SystemExit(f"{s}: least-request stays above {GAIN_TARGET:.0%} up to {hi:.0f}/s")
    for _ in range(6):
        mid = (lo + hi) / 2
        if att(mid)[0] > GAIN_TARGET:
            lo = mid
        else:
            hi = mid
    rate = hi
    out: dict[str, Any] = {}
    for p in pols:
        kind, params = VARIANTS.get(p, (p, {}))
        scn_p = variant_scenario(scn, p)
        r = run_once(scn_p, kind, rate, requests=n_at(rate), params=params)
        o = r.summary["overall"]
        out[p] = {
            "kind": kind,
            "engine_scheduling": scn_p.scheduling,
            "service_gain": o["service_gain"],
            "service_gain_ratio": o["service_gain_ratio"],
            "dslo_attainment": o["dslo_attainment"],
            "tiers": {
                k: {
                    "class": next(t.slo_class.value for t in scn.tiers if t.name == k),
                    "dslo_attainment": v["dslo_attainment"],
                    "service_gain": v["service_gain"],
                    "arrivals": v["arrivals"],
                    "calls": v.get("calls", v["arrivals"]),
                }
                for k, v in r.summary["tiers"].items()
            },
            "wall_s": r.wall_s,
        }
    return {
        "rate_rps": rate,
        "servers": scn.servers,
        "load": f"least-request attains {GAIN_TARGET:.0%} of units (bisection)",
        "policies": out,
        **gain_ratios(out),
        "targets": {"tempo_vs_least_request": 2.0, "tempo_vs_polyserve": 1.2},
    }


def gain_ratios(out: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Tempo's service gain over the others, and the ceiling over least-request and
    polyserve: 1 / their share of the maximum gain (every request meeting its objective),
    the most any policy could have over them at this load."""
    g = {p: v["service_gain"] for p, v in out.items()}

    def ceiling(p: str) -> float | None:
        ratio = out.get(p, {}).get("service_gain_ratio")
        return 1.0 / ratio if ratio else None

    return {
        "tempo_vs_least_request": _div(g.get("tempo"), g.get("least-request")),
        "tempo_vs_polyserve": _div(g.get("tempo"), g.get("polyserve")),
        "tempo_vs_least_request_edf": _div(g.get("tempo"), g.get("least-request+edf")),
        "ceiling_vs_least_request": ceiling("least-request"),
        "ceiling_vs_polyserve": ceiling("polyserve"),
    }


def report_gain(console: Console, s: str, e: dict[str, Any]) -> None:
    t = Table(title=f"{s}: {e['servers']} servers at {e['rate_rps']:.1f} arrivals/s ({e['load']})")
    first = next(iter(e["policies"].values()), None)
    tiers = list(first["tiers"]) if first else []
    for c in ("policy", "service gain", "of max", "attainment", *tiers):
        t.add_column(c, justify="right")
    for p, v in sorted(e["policies"].items(), key=lambda kv: -(kv[1]["service_gain"] or 0)):
        t.add_row(
            p,
            f"{v['service_gain']:.4g}",
            _f(v["service_gain_ratio"], 3),
            _f(v["dslo_attainment"], 3),
            *(_f(v["tiers"][k]["dslo_attainment"], 3) for k in tiers),
        )
    console.print(t)
    console.print(
        f"tempo vs least-request: {_x(e['tempo_vs_least_request'])} (target 2x) · "
        f"vs polyserve: {_x(e['tempo_vs_polyserve'])} (target 1.2x) · "
        f"vs least-request+edf: {_x(e['tempo_vs_least_request_edf'])}"
    )
    console.print(
        f"ceiling (every request meets its objective): {_x(e['ceiling_vs_least_request'])} "
        f"least-request's gain, {_x(e['ceiling_vs_polyserve'])} polyserve's"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="OUT", help="write the results here")
    ap.add_argument("--scenarios", default=",".join((*SCENARIOS, *GAIN_SCENARIOS)))
    ap.add_argument(
        "--policies",
        help="policies to compare (default: every kind and variant; the service-gain "
        f"scenarios take theirs from {', '.join(GAIN_POLICIES)})",
    )
    ap.add_argument("--requests", type=int, help="requests per probe (default: each scenario's)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes")
    args = ap.parse_args(argv)
    console = Console()
    scns = [s for s in args.scenarios.split(",") if s]
    given = args.policies is not None
    pols = [p for p in (args.policies or ",".join(policies())).split(",") if p]
    unknown = [p for p in pols if p not in policies()]
    if unknown:
        console.print(f"[red]unknown policies {unknown}; known: {policies()}[/red]")
        return 2
    gain_scns = [s for s in scns if s in GAIN_SCENARIOS]
    scns = [s for s in scns if s not in GAIN_SCENARIOS]
    gpols = pols if given else [p for p in pols if p not in GAIN_ONLY]  # the goodput comparison's
    jobs = [(s, p) for s in scns for p in gpols]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    t0 = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            futs = {ex.submit(one, s, p, args.requests): (s, p) for s, p in jobs}
            for f, key in futs.items():
                results[key] = f.result()
                console.print(f"[dim]{key[0]} {key[1]}: done ({time.time() - t0:.0f} s)[/dim]")
    else:
        for s, p in jobs:
            results[(s, p)] = one(s, p, args.requests)
            console.print(
                f"[dim]{s} {p}: {results[(s, p)]['goodput_rps_per_server']} ({time.time() - t0:.0f} s)[/dim]"
            )
    out: dict[str, Any] = {"scenarios": {}, "requests_per_probe": args.requests, "wall_s": time.time() - t0}
    for s in scns:
        entry = summarize(s, {p: results[(s, p)] for p in gpols}, args.requests)
        out["scenarios"][s] = entry
        report(console, s, entry)
    for s in gain_scns:
        gp = [p for p in pols if p in GAIN_POLICIES or (given and p in GAIN_EXTRA)] or list(GAIN_POLICIES)
        entry = gain_entry(s, gp, args.requests, console)
        out["scenarios"][s] = entry
        report_gain(console, s, entry)
    out["wall_s"] = time.time() - t0  # every comparison, the service-gain ones included
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
