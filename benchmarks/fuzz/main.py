#!/usr/bin/env python3
"""Fuzz the live router: ``scripts/fuzz.py [--examples N] [--seed S]`` (default 10,000).

Starts a simulated vLLM and TGI engine and ``slorouter serve`` as processes on
127.0.0.1 (:mod:`benchmarks.fuzz.stack`), sends N generated hostile requests (hypothesis
strategies in :mod:`benchmarks.fuzz.strategies`: bodies, headers, methods, paths, framing), each
on its own connection, and prints JSON: inputs sent, answers by status class, responses
>= 500, hangs (no complete answer within 10 s), time per input, and whether anything was
left in flight afterwards. Exit status 1 if any response was >= 500, hung, or had no final HTTP answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections import Counter

from hypothesis import HealthCheck, given, seed, settings
from rich.progress import Progress

from benchmarks.children import busy_series
from benchmarks.fuzz.stack import fuzz_stack
from benchmarks.fuzz.strategies import FuzzRequest, fuzz_requests, send


def inflight(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return busy_series(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=10_000, help="generated inputs to send (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    args = ap.parse_args(argv)
    if args.examples < 1:
        ap.error("--examples: give a number >= 1")
    statuses: Counter[str] = Counter()
    bad: list[dict[str, object]] = []
    times: list[float] = []
    t0 = time.monotonic()
    with fuzz_stack() as stack, Progress(transient=True) as progress:
        task = progress.add_task("fuzzing", total=args.examples)

        @seed(args.seed)
        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(req=fuzz_requests)
        def run(req: FuzzRequest) -> None:
            a = send(stack.port, req, timeout_s=10.0)
            times.append(a.seconds)
            status = a.status
            final = status is not None and status >= 200
            if a.hung:
                key = "hang"
            elif status is None or not final:
                key = "no-final-answer"
            else:
                key = f"{status // 100}xx"
            statuses[key] += 1
            if a.hung or not final or a.status is None or a.status >= 500:
                bad.append({"request": repr(req)[:500], "answer": a.raw_head[:200].decode("latin-1")})
            progress.advance(task)

        run()
        deadline = time.monotonic() + 5
        while (left := inflight(stack.port)) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = stack.router_log()
    times.sort()
    report = {
        "inputs": len(times),
        "by_status": dict(sorted(statuses.items())),
        "responses_5xx": statuses["5xx"],
        "hangs": statuses["hang"],
        "no_final_answer": statuses["no-final-answer"],
        "left_in_flight": left,
        "router_tracebacks": log.count("Traceback"),
        "seconds": round(time.monotonic() - t0, 1),
        "p50_ms": round(times[len(times) // 2] * 1e3, 2),
        "p99_ms": round(times[int(len(times) * 0.99)] * 1e3, 2),
        "max_ms": round(times[-1] * 1e3, 1),
        "first_failures": bad[:5],
    }
    print(json.dumps(report, indent=2))
    return 1 if bad or left or report["router_tracebacks"] else 0


if __name__ == "__main__":
    sys.exit(main())
