#!/usr/bin/env python3
"""Router overhead: the same load direct to the engines, through nginx, through a minimal
aiohttp pass-through, through the Rust vllm-router, and through slorouter (round-robin
and polyserve) — in one run, ratios side by side.

Three scenarios, each target measured ``--repeats`` times in rounds (order rotates per round):

* ``paced_32x20ms``   — 32 streams, engines stepping every 20 ms whatever the batch
  (each token is its own read and write: the fair per-token comparison);
* ``unpaced_64``      — 64 streams, engines stepping as fast as they can (~0 s steps);
* ``nonstreaming_32`` — 32 clients, non-streaming requests to the unpaced engines.

Engines: 2 simulated vLLM engines (``slorouter sim``, a generated profile whose step is
``c0`` alone). Targets: ``direct`` (clients spread over the engines), ``nginx`` (1 worker,
generated config in a temp dir: proxy_buffering off, HTTP/1.1 keep-alive upstream,
round-robin), ``aiohttp-min`` (:mod:`benchmarks.overhead.passthrough`: aiohttp + uvloop,
copies reads, no parsing — the floor for an aiohttp router), ``vllm-router`` (the Rust
router from PyPI, round-robin; the ``bench`` extra) and the real ``slorouter serve``
(generated config): ``slorouter`` with policy round-robin and a best-effort tier,
``slorouter-polyserve`` with policy polyserve and a latency tier. The client is this process (aiohttp +
uvloop; closed-loop streams with output lengths spread over 0.5–1.5× ``--max-tokens`` and,
when paced, staggered starts, so arrivals do not come in synchronized bursts). By default
the proxies run on core 1 and engines + client on core 0 (``taskset`` /
``sched_setaffinity``; ``--no-pin`` to disable).

Figures per target (medians over repeats): added TTFT p50/p99 and added inter-token gap
p99 (paired with the direct run of the same round), tokens/s, proxy CPU µs per token and
per request (CPU time of the proxy's processes before/after the run — nginx = master +
worker — from /proc/PID/task/*/schedstat, cross-checked with utime+stime of
/proc/PID/stat), the share of the run the proxy ran and waited for its core, RSS; ratios
to nginx (and slorouter's to aiohttp-min). Prints JSON on stdout, progress and tables on
stderr. See docs/overhead.md.

The JSON's ``summary.<scenario>.<target>`` has the flat figures
(``cpu_us_per_unit``, ``ratio_to_nginx``, ``added_ttft_p50_ms``, ``added_gap_p99_ms``,
``ttft_p50_over_nginx_ms``); ``scenarios`` has everything, per round too.

Usage: ``scripts/bench_overhead.sh [--repeats 5] [--out FILE] [--py-spy DIR]`` (the
wrapper installs the ``bench`` extra and nginx; ``bench_overhead.py`` itself does not)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks.overhead.client import make_session, run_load, warm_up
from benchmarks.overhead.procs import (
    VENV_BIN,
    Proc,
    start_nginx,
    start_passthrough,
    start_sim,
    start_slorouter,
    start_vllm_router,
)
from benchmarks.overhead.report import flat_summary, print_table, run_record, summarize


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fleet: str  # which engine fleet: "paced" | "unpaced"
    streams: int
    stream: bool
    max_tokens: int
    duration_s: float
    stagger_s: float = 0.0  # worker i starts i/streams of this late (spreads closed-loop arrivals)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=5, help="runs per target and scenario (default 5)")
    p.add_argument("--paced-duration", type=float, default=3.5, help="seconds per paced run (default 3.5)")
    p.add_argument(
        "--unpaced-duration", type=float, default=2.5, help="seconds per unpaced run (default 2.5)"
    )
    p.add_argument(
        "--nonstream-duration", type=float, default=2.0, help="seconds per non-streaming run (default 2)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=64, help="output tokens per streamed request (default 64)"
    )
    p.add_argument("--nonstream-tokens", type=int, default=16, help="output tokens per non-streaming request")
    p.add_argument("--step-ms", type=float, default=20.0, help="paced engines' step [ms] (default 20)")
    p.add_argument(
        "--warmup", type=float, default=1.0, help="discarded load per target first [s] (default 1)"
    )
    p.add_argument("--proxy-core", type=int, default=1, help="core for the proxies (default 1)")
    p.add_argument("--load-core", type=int, default=0, help="core for engines and client (default 0)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--skip-nginx", action="store_true", help="no nginx (no ratios then)")
    p.add_argument(
        "--skip-baseline", action="store_true", help="no minimal aiohttp pass-through (target aiohttp-min)"
    )
    p.add_argument("--skip-vllm-router", action="store_true", help="no Rust vllm-router (target vllm-router)")
    p.add_argument(
        "--skip-polyserve",
        action="store_true",
        help="no slorouter-polyserve target",
    )
    p.add_argument(
        "--base",
        type=Path,
        metavar="DIR",
        help="also run slorouter from this source tree (e.g. a git worktree of the commit before a "
        "change), as targets slorouter@base (and slorouter-polyserve@base): before and after in one run",
    )
    p.add_argument("--only", choices=("paced", "unpaced", "nonstreaming"), action="append", help="scenarios")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument("--logs", type=Path, metavar="DIR", help="keep configs and process logs in DIR")
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record slorouter (both targets) with py-spy (raw folded stacks into DIR) during its "
        "runs; perturbs the figures — use for profiling only "
        "(python -m benchmarks.overhead.profile sums them)",
    )
    p.add_argument("--py-spy-native", action="store_true", help="with --py-spy: include native frames")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.max_tokens < 2 or a.nonstream_tokens < 1 or a.step_ms <= 0:
        p.error("--repeats >= 1, --max-tokens >= 2, --nonstream-tokens >= 1 and --step-ms > 0, please")
    if min(a.paced_duration, a.unpaced_duration, a.nonstream_duration) <= 0:
        p.error("durations must be > 0")
    ncpu = os.cpu_count() or 1
    if not a.no_pin and max(a.proxy_core, a.load_core) >= ncpu:
        p.error(f"--proxy-core/--load-core: this machine has cores 0..{ncpu - 1} (or use --no-pin)")
    return a


def scenarios(a: argparse.Namespace) -> list[Scenario]:
    def lengths(n: int, streams: int) -> str:
        lo, hi = max(1, round(n * 0.5)), round(n * (1.5 - 1 / streams))
        return f"{lo}–{hi} tokens/request (mean ~{n})"

    step_s = a.step_ms / 1e3
    all_ = [
        Scenario(
            "paced_32x20ms", f"32 streams, {a.step_ms:g} ms steps, {lengths(a.max_tokens, 32)}", "paced",
            32, True, a.max_tokens, a.paced_duration,
            stagger_s=min(a.paced_duration / 4, a.max_tokens * step_s / 2),
        ),
        Scenario(
            "unpaced_64", f"64 streams, ~0 s steps, {lengths(a.max_tokens, 64)}", "unpaced", 64, True,
            a.max_tokens, a.unpaced_duration,
        ),
        Scenario(
            "nonstreaming_32", f"32 clients, non-streaming, ~0 s steps, {lengths(a.nonstream_tokens, 32)}",
            "unpaced", 32, False, a.nonstream_tokens, a.nonstream_duration,
        ),
    ]  # fmt: skip
    if not a.only:
        return all_
    return [s for s in all_ if s.name.split("_")[0] in a.only]


class Spy:
    """py-spy record attached to a PID for the duration of a ``with`` block."""

    def __init__(self, out_dir: Path | None, pid: int, name: str, native: bool = False) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            exe = VENV_BIN / "py-spy"
            argv = [str(exe), "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
            argv += [
                "--output",
                str(out_dir / f"{name}.txt"),
                *(["--native"] if native else ["--nonblocking"]),
            ]
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)

    def __enter__(self) -> Spy:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def measure(
    sc: Scenario, target: str, urls: list[str], proxy: Proc | None, sim: Proc, a: argparse.Namespace, rnd: int
) -> dict[str, Any]:
    async with make_session(sc.streams) as session:
        warm_errors = await warm_up(session, urls, sc.streams)
        spy_name = f"{sc.name}-{target}-r{rnd}"
        spy_dir = a.py_spy if target.startswith("slorouter") else None
        with Spy(spy_dir, proxy.pid if proxy else 0, spy_name, a.py_spy_native):
            p0 = proxy.cpu() if proxy else None
            e0 = sim.cpu()
            res = await run_load(
                session, urls, streams=sc.streams, duration_s=sc.duration_s, max_tokens=sc.max_tokens,
                stream=sc.stream, spread=True, stagger_s=sc.stagger_s,
            )  # fmt: skip
            p1 = proxy.cpu() if proxy else None
            e1 = sim.cpu()
    cpu = None if p0 is None or p1 is None else tuple(b - a for a, b in zip(p0, p1, strict=True))
    rec = run_record(target, res, cpu, e1[1] - e0[1], proxy.rss() if proxy else None)
    if warm_errors:
        rec["warmup_errors"] = warm_errors
    return rec


async def run_fleet(
    a: argparse.Namespace, fleet: str, scs: list[Scenario], tmp: Path, progress: Any, task: Any
) -> dict[str, Any]:
    pin_load = None if a.no_pin else a.load_core
    pin_proxy = None if a.no_pin else a.proxy_core
    c0 = a.step_ms / 1e3 if fleet == "paced" else 1e-6
    procs: list[Proc] = []
    out: dict[str, Any] = {}
    try:
        sim, ports = start_sim(tmp, fleet, c0, 2, pin_load)
        procs.append(sim)
        targets: dict[str, tuple[list[str], Proc | None]] = {
            "direct": ([f"http://127.0.0.1:{p}/v1/chat/completions" for p in ports], None)
        }
        if not a.skip_nginx:
            ng, nport = start_nginx(tmp, ports, pin_proxy)
            procs.append(ng)
            targets["nginx"] = ([f"http://127.0.0.1:{nport}/v1/chat/completions"], ng)
        if not a.skip_baseline:
            ap, aport = start_passthrough(tmp, ports, pin_proxy)
            procs.append(ap)
            targets["aiohttp-min"] = ([f"http://127.0.0.1:{aport}/v1/chat/completions"], ap)
        if not a.skip_vllm_router:
            vr, vport = start_vllm_router(tmp, ports, pin_proxy)
            procs.append(vr)
            targets["vllm-router"] = ([f"http://127.0.0.1:{vport}/v1/chat/completions"], vr)
        sr, sport = start_slorouter(tmp, ports, pin_proxy)
        procs.append(sr)
        targets["slorouter"] = ([f"http://127.0.0.1:{sport}/v1/chat/completions"], sr)
        if not a.skip_polyserve:
            sp, pport = start_slorouter(tmp, ports, pin_proxy, policy="polyserve")
            procs.append(sp)
            targets["slorouter-polyserve"] = ([f"http://127.0.0.1:{pport}/v1/chat/completions"], sp)
        if a.base is not None:
            for policy, name in (("round-robin", "slorouter"), ("polyserve", "slorouter-polyserve")):
                if policy == "polyserve" and a.skip_polyserve:
                    continue
                bp, bport = start_slorouter(tmp, ports, pin_proxy, policy=policy, source=a.base)
                procs.append(bp)
                targets[f"{name}@base"] = ([f"http://127.0.0.1:{bport}/v1/chat/completions"], bp)
        names = list(targets)
        for t in names:  # a short discarded load per target: connections, caches, the JIT-less warm path
            progress.update(task, description=f"{fleet} engines: warming up {t}")
            urls = targets[t][0]
            async with make_session(scs[0].streams) as session:
                await run_load(
                    session, urls, streams=scs[0].streams, duration_s=a.warmup, max_tokens=scs[0].max_tokens,
                    spread=True,
                )  # fmt: skip
        for sc in scs:
            rounds: list[dict[str, dict[str, Any]]] = []
            for rnd in range(a.repeats):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                rows: dict[str, dict[str, Any]] = {}
                for t in order:
                    progress.update(task, description=f"{sc.name} round {rnd + 1}/{a.repeats}: {t}")
                    urls, proxy = targets[t]
                    rows[t] = await measure(sc, t, urls, proxy, sim, a, rnd)
                    progress.advance(task)
                rounds.append(rows)
            out[sc.name] = {
                "description": sc.description,
                "stream": sc.stream,
                "streams": sc.streams,
                "max_tokens": sc.max_tokens,
                "duration_s": sc.duration_s,
                "engine_step_s": c0,
                "repeats": a.repeats,
                "summary": summarize(rounds, names, sc.stream),
                "rounds": rounds,
            }
    finally:
        for p in reversed(procs):
            p.stop()
    return out


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    scs = scenarios(a)
    n_targets = 6 - a.skip_nginx - a.skip_baseline - a.skip_vllm_router - a.skip_polyserve
    if a.base is not None:
        n_targets += 1 if a.skip_polyserve else 2
    result: dict[str, Any] = {
        "command": " ".join(shlex.quote(x) for x in [sys.argv[0], *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "pinning": None
        if a.no_pin
        else {"proxy_core": a.proxy_core, "engines_and_client_core": a.load_core, "how": "taskset -c"},
        "engines": "2 x `slorouter sim` (vLLM chat wire format), step = c0 only (batch-independent)",
        "proxies": {
            "nginx": "1 worker, proxy_buffering off, proxy_http_version 1.1, upstream keepalive 256",
            "aiohttp-min": "benchmarks/overhead/passthrough.py: aiohttp + uvloop, copy reads, no parsing",
            "vllm-router": "vllm-router (Rust, PyPI), --policy round_robin, --log-level warning",
            "slorouter": "slorouter serve, policy round-robin, one best_effort tier",
            "slorouter-polyserve": "slorouter serve, policy polyserve, latency tier TTFT 2 s, TPOT 100 ms",
            **({"@base": f"the same, run from the source tree {a.base}"} if a.base else {}),
        },
    }
    t0 = time.monotonic()
    if a.logs is not None:
        a.logs.mkdir(parents=True, exist_ok=True)
    workdir = (
        contextlib.nullcontext(str(a.logs))
        if a.logs
        else tempfile.TemporaryDirectory(prefix="bench-overhead-")
    )
    with (
        workdir as tmpd,
        Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            transient=True,
        ) as progress,
    ):  # fmt: skip
        task = progress.add_task("starting", total=len(scs) * a.repeats * n_targets)
        out: dict[str, Any] = {}
        for fleet in ("paced", "unpaced"):
            mine = [s for s in scs if s.fleet == fleet]
            if mine:
                out.update(await run_fleet(a, fleet, mine, Path(tmpd), progress, task))
    result["scenarios"] = out
    result["summary"] = flat_summary(out)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not a.no_pin:
        os.sched_setaffinity(0, {a.load_core})
    try:
        try:
            import uvloop
        except ImportError:
            result = asyncio.run(main_async(a))
        else:
            result = uvloop.run(main_async(a))
    except RuntimeError as e:
        print(f"bench_overhead: {e}", file=sys.stderr)
        return 1
    print_table(result["scenarios"])
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
