#!/usr/bin/env python3
"""CPU the shared load picture costs one router process, against the CPU of its tokens.

    scripts/bench_sync.py [--json OUT] [--backends 20,200,1000] [--holders 2,8] [--seconds 2]

A router process that shares its view does, once per tick and never per token: build its
row (``LoadSync.row``), serialize it, parse the other holders' rows and absorb them
(``LoadSync.absorb``). This measures that work on a tracker whose backends each carry
residents of two tiers with tokens flowing (so rows are full: counters, tiers and slack
summaries), for several fleet sizes and numbers of holders, and converts it into the
share of one core at the default ticks (workers: every 20 ms; replicas: every 100 ms) and
into CPU per token at a given token rate per process, next to the per-token CPU of the
proxy path (``--us-per-token``, default 95 µs: docs/overhead.md, 32 paced streams).
Prints JSON (and writes it with --json): ``{"runs": [{"backends", "holders",
"tick_us", "share_of_core": {"20ms", "100ms"}, "cpu_per_token_ratio": {...}}]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from slorouter.clock import ManualClock
from slorouter.models.static import StaticLatency, StaticLengths
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.sync import LoadSync, Row
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Slo, SloClass, Tier

TIERS = (
    Tier("fast", Slo(SloClass.LATENCY, 1.0, 0.03), rank=0),
    Tier("slow", Slo(SloClass.LATENCY, 5.0, 0.1), rank=1),
)


def holder(clock: ManualClock, bs: BackendSet, name: str, per_backend: int, rid0: int) -> LoadSync:
    t = Tracker(clock, bs, Health(b.id for b in bs.backends), StaticLatency(), StaticLengths(200))
    sync = LoadSync(t, name, quota=True)
    rid = rid0
    for b in bs.backends:
        for k in range(per_backend):
            rid += 1
            t.on_arrival(RequestInfo(rid, TIERS[k % 2], 0.0, 800, 400, 200))
            t.on_dispatch(rid, b.id)
            t.on_tokens(rid, 1 + k)
    return sync


def measure(backends: int, holders: int, seconds: float) -> dict[str, Any]:
    clock = ManualClock()
    bs = BackendSet(
        [Backend(f"b{i}", f"http://b{i}", tier=TIERS[i % 2].name) for i in range(backends)], TIERS
    )
    syncs = [holder(clock, bs, f"h{h}", 6, h * 10_000_000) for h in range(holders)]
    me = syncs[0]
    others = [s.row(0.0).to_bytes() for s in syncs[1:]]
    ticks = 0
    spent = 0.0
    while spent < seconds:
        clock.advance(0.02)
        for rid in range(1, 1 + backends * 6, 7):  # tokens keep flowing between ticks (not timed)
            me.tracker.on_tokens(rid, 1)
        t0 = time.process_time()
        raw = me.row(clock.now()).to_bytes()  # publish
        rows = {r.holder: r for r in (Row.from_bytes(b) for b in [raw, *others])}  # read
        me.absorb(rows, clock.now())
        spent += time.process_time() - t0
        ticks += 1
    tick_us = spent / ticks * 1e6
    return {"backends": backends, "holders": holders, "tick_us": tick_us, "row_bytes": len(raw)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--backends", default="20,200,1000")
    ap.add_argument("--holders", default="2,8")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tokens-per-s", type=float, default=10_000.0, help="tokens one process streams")
    ap.add_argument("--us-per-token", type=float, default=95.0, help="CPU per token of the proxy path")
    args = ap.parse_args(argv)
    try:
        bs = [int(x) for x in args.backends.split(",")]
        hs = [int(x) for x in args.holders.split(",")]
    except ValueError:
        print("--backends and --holders take comma-separated integers", file=sys.stderr)
        return 2
    runs = []
    for b in bs:
        for h in hs:
            r = measure(b, h, args.seconds)
            per_token = args.us_per_token
            for label, tick_s in (("20ms", 0.02), ("100ms", 0.1)):
                share = r["tick_us"] / 1e6 / tick_s
                r.setdefault("share_of_core", {})[label] = share
                extra_us = r["tick_us"] / tick_s / args.tokens_per_s
                r.setdefault("cpu_per_token_ratio", {})[label] = (per_token + extra_us) / per_token
            runs.append(r)
    out = {"tokens_per_s": args.tokens_per_s, "us_per_token": args.us_per_token, "runs": runs}
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
