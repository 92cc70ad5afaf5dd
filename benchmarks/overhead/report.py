"""Statistics and the terminal table for ``scripts/bench_overhead.py``.

A *run* is one measured load against one target; a scenario repeats every target
``repeats`` times in rounds (the order rotates per round). Summaries are medians over
rounds; "added" figures are medians of per-round differences to the direct run of the
same round (paired, so slow drifts of the shared machine cancel); ratios to nginx are
ratios of the medians (per-round ratios are kept too).
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from benchmarks.overhead.client import LoadResult


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no data)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 3)


def run_record(
    target: str,
    res: LoadResult,
    proxy_cpu: tuple[float, ...] | None,
    engine_cpu_s: float,
    rss: float | None,
) -> dict[str, Any]:
    """One run's figures. ``proxy_cpu`` = (utime+stime from /proc/PID/stat, schedstat run
    time, schedstat run-queue wait, stime from /proc/PID/stat) in seconds; the
    per-token/per-request figures use the schedstat run time (ns resolution; stat's is
    10 ms), the stat one is kept as ``*_stat`` to cross-check; ``*_sys`` is the kernel's
    part (system calls), from stime. ``proxy_cpu_util``: share of the run's wall time the proxy ran;
    ``proxy_wait_util``: share it was ready to run but waited for the (shared) core."""
    tok, req = res.tokens, res.requests
    rec: dict[str, Any] = {
        "target": target,
        "requests": req,
        "tokens": tok,
        "errors": res.errors,
        "elapsed_s": round(res.elapsed_s, 3),
        "tokens_per_s": round(tok / res.elapsed_s, 1) if res.elapsed_s else None,
        "requests_per_s": round(req / res.elapsed_s, 1) if res.elapsed_s else None,
        "ttft_p50_ms": _ms(pct(res.ttft_s, 0.50)),
        "ttft_p99_ms": _ms(pct(res.ttft_s, 0.99)),
        "gap_p50_ms": _ms(pct(res.gaps_s, 0.50)),
        "gap_p99_ms": _ms(pct(res.gaps_s, 0.99)),
        "engine_cpu_us_per_token": round(engine_cpu_s * 1e6 / tok, 2) if tok else None,
    }
    if res.error_kinds:
        rec["error_kinds"] = res.error_kinds
    if proxy_cpu is not None:
        stat, sched, wait, kernel = proxy_cpu
        rec["proxy_cpu_s"] = round(sched, 4)
        rec["proxy_sys_s_stat"] = round(kernel, 2)
        rec["proxy_cpu_s_stat"] = round(stat, 2)
        rec["proxy_cpu_util"] = round(sched / res.elapsed_s, 3) if res.elapsed_s else None
        rec["proxy_wait_util"] = round(wait / res.elapsed_s, 3) if res.elapsed_s else None
        rec["proxy_cpu_us_per_token"] = round(sched * 1e6 / tok, 2) if tok else None
        rec["proxy_cpu_us_per_token_stat"] = round(stat * 1e6 / tok, 2) if tok else None
        rec["proxy_cpu_us_per_request"] = round(sched * 1e6 / req, 1) if req else None
        rec["proxy_sys_us_per_token_stat"] = round(kernel * 1e6 / tok, 2) if tok else None
        rec["proxy_sys_us_per_request_stat"] = round(kernel * 1e6 / req, 1) if req else None
        rec["proxy_rss_mb"] = None if rss is None else round(rss, 1)
    return rec


def _median(vals: list[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return round(statistics.median(xs), 3) if xs else None


_KEYS = (
    "tokens_per_s",
    "requests_per_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "gap_p50_ms",
    "gap_p99_ms",
    "engine_cpu_us_per_token",
    "proxy_cpu_util",
    "proxy_wait_util",
    "proxy_cpu_us_per_token",
    "proxy_cpu_us_per_token_stat",
    "proxy_cpu_us_per_request",
    "proxy_sys_us_per_token_stat",
    "proxy_sys_us_per_request_stat",
)
_ADDED = {
    "ttft_p50_ms": "added_ttft_p50_ms",
    "ttft_p99_ms": "added_ttft_p99_ms",
    "gap_p99_ms": "added_gap_p99_ms",
}


def summarize(rounds: list[dict[str, dict[str, Any]]], targets: list[str], stream: bool) -> dict[str, Any]:
    """Per target: medians over rounds, paired added latencies, and ratios to nginx."""
    out: dict[str, Any] = {}
    for t in targets:
        runs = [r[t] for r in rounds if t in r]
        s: dict[str, Any] = {"runs": len(runs), "errors": sum(r["errors"] for r in runs)}
        for k in _KEYS:
            m = _median([r.get(k) for r in runs])
            if m is not None:
                s[k] = m
        rss = [r["proxy_rss_mb"] for r in runs if r.get("proxy_rss_mb") is not None]
        if rss:
            s["proxy_rss_mb"] = max(rss)
        if t != "direct":
            for k, name in _ADDED.items():
                diffs = [
                    r[t][k] - r["direct"][k]
                    for r in rounds
                    if t in r and "direct" in r and r[t].get(k) is not None and r["direct"].get(k) is not None
                ]
                m = _median(list(diffs))
                if m is not None:
                    s[name] = m
        out[t] = s
    for ref in ("nginx", "aiohttp-min"):
        base = out.get(ref)
        if base is None:
            continue
        for t, s in out.items():
            if t in ("direct", "nginx", ref) or (ref == "aiohttp-min" and not t.startswith("slorouter")):
                continue
            s[f"ratio_to_{ref.replace('-', '_')}"] = _ratios(rounds, t, ref, s, base, stream)
    for t, s in out.items():  # a change measured against the code before it (--base)
        before = out.get(f"{t}@base")
        if before is not None:
            s["ratio_to_base"] = _ratios(rounds, t, f"{t}@base", s, before, stream)
    return out


def _ratios(
    rounds: list[dict[str, dict[str, Any]]],
    t: str,
    ref: str,
    s: dict[str, Any],
    base: dict[str, Any],
    stream: bool,
) -> dict[str, Any]:
    """Ratios of medians (CPU per unit of work, throughput), and the per-round CPU ratios."""
    cpu = "proxy_cpu_us_per_token" if stream else "proxy_cpu_us_per_request"
    rate = "tokens_per_s" if stream else "requests_per_s"
    ratios: dict[str, Any] = {}
    for k in (cpu, rate):
        if s.get(k) and base.get(k):
            ratios[k] = round(s[k] / base[k], 2)
    per_round = [
        round(r[t][cpu] / r[ref][cpu], 2)
        for r in rounds
        if t in r and ref in r and r[t].get(cpu) and r[ref].get(cpu)
    ]
    if per_round:
        ratios[f"{cpu}_per_round"] = per_round
    return ratios


def flat_summary(scenarios: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{scenario: {target: {cpu_us_per_unit, ratio_to_nginx, added_ttft_p50_ms,
    added_gap_p99_ms, ttft_p50_over_nginx_ms}}}`` for every proxy (not ``direct``): CPU
    per token (streams) or per request, its ratio to nginx's (ratio of medians), the
    median over rounds of the proxy's TTFT p50 (non-streaming: response time) and gap
    p99 minus the direct run's, and the added TTFT p50 minus nginx's added TTFT p50."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, sc in scenarios.items():
        stream = sc["stream"]
        cpu_key = "proxy_cpu_us_per_token" if stream else "proxy_cpu_us_per_request"
        summ = sc["summary"]
        ng = summ.get("nginx", {})
        rows: dict[str, dict[str, float | None]] = {}
        for target, s in summ.items():
            if target == "direct":
                continue
            ratio = 1.0 if target == "nginx" else s.get("ratio_to_nginx", {}).get(cpu_key)
            ttft = s.get("added_ttft_p50_ms")
            ng_ttft = ng.get("added_ttft_p50_ms")
            rows[target] = {
                "cpu_us_per_unit": s.get(cpu_key),
                **({"ratio_to_base": s["ratio_to_base"].get(cpu_key)} if "ratio_to_base" in s else {}),
                "ratio_to_nginx": ratio,
                "added_ttft_p50_ms": ttft,
                "added_gap_p99_ms": s.get("added_gap_p99_ms") if stream else None,
                "ttft_p50_over_nginx_ms": None
                if ttft is None or ng_ttft is None
                else round(ttft - ng_ttft, 3),
            }
        out[name] = rows
    return out


def print_table(scenarios: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True, width=None if sys.stderr.isatty() else 170)
    for name, sc in scenarios.items():
        stream = sc["stream"]
        t = Table(title=f"{name}: {sc['description']} (medians of {sc['repeats']})")
        cols = ["target", "tok/s" if stream else "req/s"]
        if stream:
            cols += ["+TTFT p50 ms", "+TTFT p99 ms", "+gap p99 ms", "µs/token", "sys µs"]
        else:
            cols += ["+resp p50 ms", "µs/request", "sys µs"]
        cols += ["× nginx", "× aiohttp-min"]
        with_base = any("ratio_to_base" in s for s in sc["summary"].values())
        cols += ["× @base"] if with_base else []
        cols += ["RSS MB", "errors"]
        for c in cols:
            t.add_column(c, justify="left" if c == "target" else "right")
        for target, s in sc["summary"].items():

            def f(k: str, s: dict[str, Any] = s) -> str:
                v = s.get(k)
                return "–" if v is None else f"{v:g}"

            cpu_key = "proxy_cpu_us_per_token" if stream else "proxy_cpu_us_per_request"
            row = [target, f("tokens_per_s" if stream else "requests_per_s")]
            if stream:
                row += [f("added_ttft_p50_ms"), f("added_ttft_p99_ms"), f("added_gap_p99_ms")]
            else:
                row += [f("added_ttft_p50_ms")]
            row += [f(cpu_key)]
            row += [f("proxy_sys_us_per_token_stat" if stream else "proxy_sys_us_per_request_stat")]
            ratio = s.get("ratio_to_nginx", {}).get(cpu_key)
            row += ["1.0" if target == "nginx" else "–" if ratio is None else f"{ratio:g}"]
            r2 = s.get("ratio_to_aiohttp_min", {}).get(cpu_key)
            row += ["1.0" if target == "aiohttp-min" else "–" if r2 is None else f"{r2:g}"]
            if with_base:
                r3 = s.get("ratio_to_base", {}).get(cpu_key)
                row += ["–" if r3 is None else f"{r3:g}"]
            row += [f("proxy_rss_mb"), str(s["errors"])]
            t.add_row(*row)
        con.print(t)
