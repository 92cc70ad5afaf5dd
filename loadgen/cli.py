"""``slorouter-loadgen run | sweep | report`` — see docs/loadgen.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loadgen import plots, results, sweep
from loadgen.errors import LoadgenError
from loadgen.report import print_report
from loadgen.runner import RunState, run_workload
from loadgen.workload import Workload, load_workload

T = TypeVar("T")


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v

    return parse


def _rates(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rates like 2,4,8, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError("rates must be positive, e.g. --rates 2,4,8,16")
    return vals


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="http://127.0.0.1:8080", help="server base URL (default %(default)s)")
    p.add_argument("--workload", required=True, help="workload YAML (see config/workloads/)")
    p.add_argument("--seed", type=int, help="override the workload's seed")
    p.add_argument("--model", help="model name to send (default: the workload's; 'auto' asks /v1/models)")
    p.add_argument(
        "--api-key", help="Authorization bearer key (default $OPENAI_API_KEY; tier_by: api_key ignores it)"
    )
    p.add_argument("--max-lag-ms", type=_positive(float), default=results.DEFAULT_MAX_LAG_MS,
                   help="warn when the p99 schedule lag exceeds this (default %(default)s ms)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slorouter-loadgen",
        description="Tier-aware load generator for OpenAI-compatible servers: per-token deadlines, "
        "per-tier attainment and goodput, vllm-bench-compatible JSON.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a workload once and report")
    _common(run)
    run.add_argument("--rate", type=_positive(float), help="arrivals per second (open-loop processes)")
    run.add_argument("--concurrency", type=_positive(int), help="users (process: concurrency)")
    g = run.add_mutually_exclusive_group()
    g.add_argument("--duration", type=_positive(float), help="seconds of arrivals")
    g.add_argument("--requests", type=_positive(int), help="number of arrivals (units)")
    run.add_argument("--out", help="write the results JSON here")
    run.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR (the plots extra)")

    sw = sub.add_parser("sweep", help="run rising rates and report goodput (90 %% / 99 %%) per tier")
    _common(sw)
    mode = sw.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rates", type=_rates, help="comma-separated rates, e.g. 2,4,8,16")
    mode.add_argument(
        "--search", action="store_true", help="double then bisect for the all-tiers 90%% goodput"
    )
    sw.add_argument(
        "--rate-lo", type=_positive(float), default=1.0, help="search start (default %(default)s)"
    )
    sw.add_argument(
        "--rate-hi", type=_positive(float), default=1024.0, help="search cap (default %(default)s)"
    )
    sw.add_argument(
        "--search-steps", type=_positive(int), default=4, help="bisection steps (default %(default)s)"
    )
    g = sw.add_mutually_exclusive_group()
    g.add_argument("--duration", type=_positive(float), help="seconds of arrivals per rate")
    g.add_argument("--requests", type=_positive(int), help="arrivals per rate")
    sw.add_argument(
        "--cooldown", type=float, default=2.0, help="pause between rates, s (default %(default)s)"
    )
    sw.add_argument("--servers", type=_positive(int), default=1, help="divide goodput by this many servers")
    sw.add_argument("--out", help="write the sweep JSON here")
    sw.add_argument("--plot", metavar="DIR", help="write attainment_vs_rate.png into DIR")
    sw.add_argument("--runs-dir", metavar="DIR", help="also keep each rate's full results JSON in DIR")

    rep = sub.add_parser("report", help="re-print tables and redraw plots from a saved results file")
    rep.add_argument("results", help="a results JSON written by run --out")
    rep.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    rep.add_argument("--max-lag-ms", type=_positive(float), help="re-judge the schedule lag with this limit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.command:
        parser.print_help()
        return 2
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # files and pipes get the whole table
    err = Console(stderr=True)
    try:
        if args.plot:
            plots.require()
        if args.command == "report":
            return _report(args, console)
        workload = _workload(args)
        if args.command == "run":
            return _arun(_run(args, workload, console))
        return _arun(_sweep(args, workload, console))
    except LoadgenError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


def _arun(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _workload(args: argparse.Namespace) -> Workload:
    w = load_workload(args.workload)
    rate = getattr(args, "rate", None)
    return w.with_overrides(
        rate=rate,
        duration_s=args.duration,
        requests=args.requests,
        seed=args.seed,
        concurrency=getattr(args, "concurrency", None),
        model=args.model,
    )


def _check_bounded(w: Workload) -> None:
    if w.duration_s is None and w.requests is None and w.arrival.trace is None:
        raise LoadgenError(
            f"{w.file}: give --duration S or --requests N (or duration_s/requests in the workload)"
        )


@contextlib.asynccontextmanager
async def _progress(state: RunState, show: bool, label: str) -> AsyncIterator[None]:
    if not show:
        yield
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        transient=True,
    ) as prog:
        task = prog.add_task(label, total=None, info="connecting")

        async def tick() -> None:
            while True:
                if state.started:
                    el = time.perf_counter() - state.started
                    if state.horizon_s and not state.scheduling_done:
                        prog.update(task, total=state.horizon_s, completed=min(el, state.horizon_s))
                    elif state.units_total:
                        prog.update(task, total=state.sent, completed=state.finished)
                    phase = "draining" if state.scheduling_done else "sending"
                    prog.update(
                        task,
                        info=f"{phase} · sent {state.sent} · done {state.finished} · "
                        f"in flight {state.sent - state.finished} · max lag {state.max_lag * 1000:.1f} ms",
                    )
                await asyncio.sleep(0.25)

        ticker = asyncio.ensure_future(tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def _one(args: argparse.Namespace, w: Workload, label: str, console: Console) -> dict[str, Any]:
    _check_bounded(w)
    state = RunState()
    try:
        async with _progress(state, not args.no_progress and console.is_terminal, label):
            res = await run_workload(w, args.target, api_key=args.api_key, state=state)
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:
        raise LoadgenError(
            f"cannot reach {args.target}: {exc} — is the server running? (--target URL)"
        ) from None
    return results.from_run(res, args.max_lag_ms)


async def _run(args: argparse.Namespace, w: Workload, console: Console) -> int:
    doc = await _one(args, w, f"run {w.name}", console)
    print_report(doc, console)
    if args.out:
        results.save(doc, args.out)
        console.print(f"results: {args.out}")
    if args.plot:
        for p in plots.plot_run(doc, args.plot):
            console.print(f"plot: {p}")
    return 0


async def _sweep(args: argparse.Namespace, w: Workload, console: Console) -> int:
    if w.arrival.closed_loop:
        raise LoadgenError(f"{w.file}: sweep needs an open-loop arrival process (not concurrency)")
    _check_bounded(w)

    async def run_at(rate: float) -> sweep.Point:
        wr = w.with_overrides(rate=rate)
        doc = await _one(args, wr, f"rate {rate:g}/s", console)
        if args.runs_dir:
            results.save(doc, Path(args.runs_dir) / f"{w.name}-rate{rate:g}.json")
        p = sweep.point_from_doc(rate, doc)
        tiers = " · ".join(f"{n} {'—' if v is None else f'{100 * v:.1f}%'}" for n, v in p["tiers"].items())
        flag = " [bold red](generator behind)[/]" if p["behind"] else ""
        overall = "—" if p["overall"] is None else f"{100 * p['overall']:5.1f}%"
        console.print(f"rate {rate:8.2f}/s: overall {overall} · {tiers}{flag}")
        await asyncio.sleep(args.cooldown)
        return p

    if args.search:
        points = await sweep.search(run_at, args.rate_lo, args.rate_hi, args.search_steps)
    else:
        points = await sweep.run_rates(args.rates, run_at)
    table = sweep.goodput_table(points, args.servers)
    doc = {"workload": w.name, "target": args.target, "points": points, "goodput": table}
    console.print(goodput_rich(table))
    if args.out:
        _write(args.out, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        console.print(f"sweep: {args.out}")
    if args.plot:
        path = plots.plot_sweep(
            points, Path(args.plot) / "attainment_vs_rate.png", f"{w.name}: attainment vs rate"
        )
        console.print(f"plot: {path}")
    return 0


def _write(path: str, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


def goodput_rich(table: dict[str, Any]) -> Table:
    t = Table(
        title="Goodput: highest passing rate",
        caption=f"arrivals/s over {table['servers']} server(s); a tier passes at attainment ≥ the column",
        title_justify="left",
    )
    t.add_column("criterion")
    t.add_column("≥ 90 %", justify="right")
    t.add_column("≥ 99 %", justify="right")

    def fmt(x: float | None) -> str:
        return "none passed" if x is None else f"{x:.2f}"

    for tier in table["90"]["per_tier"]:
        t.add_row(f"tier {tier}", fmt(table["90"]["per_tier"][tier]), fmt(table["99"]["per_tier"][tier]))
    t.add_section()
    t.add_row("[bold]every tier (decides)[/]", fmt(table["90"]["all_tiers"]), fmt(table["99"]["all_tiers"]))
    t.add_row(
        "overall attainment", fmt(table["90"]["overall_attainment"]), fmt(table["99"]["overall_attainment"])
    )
    if table["servers"] > 1:
        t.add_row(
            "every tier, per server",
            fmt(table["90"]["all_tiers_per_server"]),
            fmt(table["99"]["all_tiers_per_server"]),
        )
    return t


def _report(args: argparse.Namespace, console: Console) -> int:
    doc = results.load(args.results, args.max_lag_ms)
    print_report(doc, console)
    if args.plot:
        for p in plots.plot_run(doc, args.plot):
            console.print(f"plot: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
