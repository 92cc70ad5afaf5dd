"""Terminal report: a vLLM-like summary, the per-tier SLO table, the per-tier latency
table, and loud warnings when the generator itself fell behind."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100.0 * x:.1f}%"


def _ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.0f}" if x >= 1000 else f"{x:.1f}"


def _style(x: float | None) -> str:
    if x is None:
        return ""
    return "green" if x >= 0.99 else "yellow" if x >= 0.9 else "red"


def print_report(doc: dict[str, Any], console: Console | None = None) -> None:
    con = console or Console()
    lg = doc["loadgen"]
    arrival = lg["arrival"]
    rate = arrival.get("rate")
    how = (f"{arrival['process']} {rate:.2f}/s" if rate is not None else f"{arrival['process']}") + (
        f", concurrency {arrival['concurrency']}" if arrival.get("concurrency") else ""
    )
    lag = lg["schedule_lag_ms"]
    lines = [
        f"workload [bold]{lg['workload']}[/] → {lg['target']} (model {doc['model_id']}), {how}",
        f"duration {doc['duration']:.2f} s · completed {doc['completed']} · failed {doc['failed']} · "
        f"{doc['request_throughput']:.2f} req/s · {doc['output_throughput']:.0f} out tok/s · "
        f"{doc['total_token_throughput']:.0f} total tok/s",
        f"TTFT mean {doc['mean_ttft_ms']:.1f} / median {doc['median_ttft_ms']:.1f} / p99 "
        f"{doc['p99_ttft_ms']:.1f} ms · TPOT median {doc['median_tpot_ms']:.1f} ms · ITL median "
        f"{doc['median_itl_ms']:.1f} / p99 {doc['p99_itl_ms']:.1f} ms · "
        f"E2EL median {doc['median_e2el_ms']:.0f} ms",
        f"schedule lag p50 {lag['p50']:.2f} / p99 {lag['p99']:.2f} / max {lag['max']:.2f} ms · "
        f"generator CPU {lg['cpu_utilization']:.0%} of a core",
    ]
    con.print(Panel("\n".join(lines), title="slorouter-loadgen", expand=False))
    con.print(slo_table(doc))
    con.print(latency_table(doc))
    for w in lg["warnings"]:
        panel = Panel(f"[bold]{escape(w)}[/]", title="WARNING: LOAD GENERATOR BEHIND", style="bold red")
        con.print(panel)


def short_slo(slo: dict[str, Any]) -> str:
    cls = slo["class"]
    if cls == "latency":
        return f"{slo['ttft_ms']:g}/{slo['tpot_ms']:g} ms"
    if cls in ("deadline", "workflow"):
        return f"{cls} {slo['deadline_ms'] / 1000:g} s"
    return "best effort"


def slo_table(doc: dict[str, Any]) -> Table:
    t = Table(
        title="SLO attainment per tier (of all arrivals; SLO = TTFT/TPOT, or deadline)",
        title_justify="left",
    )
    for col in ("tier", "SLO", "arrivals", "ok", "429", "fail", "attain", "DSLO", "mean-TPOT", "deadline"):
        t.add_column(col, justify="left" if col in ("tier", "SLO") else "right", no_wrap=True)
    t.add_column("good/s", justify="right", no_wrap=True)
    t.add_column("gain", justify="right", no_wrap=True)
    for name, b in doc["tiers"].items():
        st = b["status"]
        unit = " wf" if b["unit"] == "workflow" else ""
        t.add_row(
            escape(name),
            short_slo(b["slo"]),
            f"{b['arrivals']}{unit}",
            str(st["ok"]),
            str(st["rejected"]),
            str(st["error"] + st["timeout"] + st["cancelled"]),
            f"[{_style(b['attainment'])}]{_pct(b['attainment'])}[/]",
            _pct(b["attainment_dslo"]),
            _pct(b["attainment_mean_tpot"]),
            _pct(b["attainment_deadline"]),
            f"{b['goodput']:.2f}" if b["goodput"] is not None else "—",
            _pct(b["service_gain_ratio"]),
        )
    o = doc["overall"]
    gain = o["service_gain"] / o["service_gain_max"] if o["service_gain_max"] else None
    t.add_section()
    t.add_row(
        "[bold]overall[/]",
        f"worst: {o['min_tier'] or '—'}",
        str(o["arrivals"]),
        "",
        "",
        "",
        f"[bold {_style(o['attainment'])}]{_pct(o['attainment'])}[/]",
        _pct(o["attainment_dslo_latency"]),
        _pct(o["attainment_mean_tpot_latency"]),
        "",
        f"{o['goodput']:.2f}" if o["goodput"] is not None else "—",
        _pct(gain),
    )
    return t


def latency_table(doc: dict[str, Any]) -> Table:
    t = Table(title="Latency per tier, ms (TTFT/TPOT/ITL over streamed calls)", title_justify="left")
    t.add_column("tier", no_wrap=True)
    cols = ("TTFT p50", "p90", "p99", "TPOT p50", "p99", "ITL p50", "p99", "E2E p50", "p99", "out tok/s")
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)

    def row(name: str, b: dict[str, Any]) -> None:
        keys = ("median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms",
                "median_itl_ms", "p99_itl_ms", "median_e2el_ms", "p99_e2el_ms")  # fmt: skip
        t.add_row(name, *(_ms(b[k]) for k in keys), f"{b['output_throughput']:.0f}")

    for name, b in doc["tiers"].items():
        row(escape(name), b)
    t.add_section()
    row("[bold]all[/]", doc)
    return t
