#!/usr/bin/env python3
"""CPU the shared load picture costs one router process, against the CPU of its tokens.

    scripts/bench_sync.py [--json OUT] [--backends 20,200,1000] [--holders 2,8] [--seconds 2]
                          [--learning 2,8]

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

``--learning 2,8``: instead, what sharing the latency models' observations adds
(slorouter.state.learning): per holder count, the CPU one process spends on its own
responses' learning plus its exchanges, with and without the observations in the rows
(``{"learning": [{"holders", "cpu_share_without", "cpu_share_with", "extra_us_per_token",
"cpu_per_token_ratio", "row_bytes_without", "row_bytes_with", ...}]}``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from slorouter.clock import ManualClock
from slorouter.models.latency import OnlineLatency, build_latency
from slorouter.models.static import StaticLatency, StaticLengths
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.learning import LearningShare
from slorouter.state.sync import LoadSync, Row
from slorouter.state.tracker import Tracker
from slorouter.values import Outcome, RequestInfo, Slo, SloClass, Status, Tier

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


def _outcome(rid: int, backend: str, now: float, rng: random.Random, mean_out: int) -> Outcome:
    """A finished response: ~``mean_out`` output tokens at a random load, its step samples."""
    out = max(2, int(rng.expovariate(1.0 / mean_out)))
    batch = rng.randint(1, 64)
    kv = batch * rng.randint(300, 1500)
    gap = 0.01 + 1e-4 * batch
    samples = tuple((gap * (1 + 0.2 * rng.random()), batch, kv) for _ in range(min(out - 1, 4096)))
    return Outcome(
        rid,
        "fast",
        backend,
        Status.OK,
        arrival=now - 3.0,
        finished_at=now,
        prompt_tokens=rng.randint(100, 3000),
        output_tokens=out,
        dispatched_at=now - 3.0,
        first_token_at=now - 2.9,
        dispatch_load=(batch, kv, 1000),
        step_samples=samples,
    )


def measure_learning(
    backends: int, holders: int, seconds: float, tokens_per_s: float, mean_out: int, exchange_s: float
) -> dict[str, Any]:
    """CPU one process spends on sharing what the latency models learn from (against the same
    exchanges without): recording its own observations, carrying them in its row, reading
    the others' and learning from them. Every holder finishes ``tokens_per_s / mean_out``
    responses a second; one exchange every ``exchange_s`` (rows keep 4 exchanges' worth)."""
    spent: dict[bool, float] = {}
    row_bytes: dict[bool, int] = {}
    for share in (False, True):
        clock = ManualClock(1000.0)
        rng = random.Random(1)
        bs = BackendSet(
            [Backend(f"b{i}", f"http://b{i}", tier=TIERS[i % 2].name) for i in range(backends)], TIERS
        )
        syncs: list[LoadSync] = []
        models: list[OnlineLatency] = []
        for h in range(holders):
            m = build_latency(clock)
            t = Tracker(clock, bs, Health(b.id for b in bs.backends), m, StaticLengths(200))
            learning = LearningShare(m, clock.now, keep_s=4 * exchange_s) if share else None
            syncs.append(LoadSync(t, f"h{h}", quota=True, learning=learning))
            models.append(m)
        me = syncs[0]
        per_exchange = tokens_per_s / mean_out * exchange_s
        owed = [0.0] * holders
        rid = 0
        timed = 0.0
        n_bytes = 0
        n = 0
        while clock.now() - 1000.0 < seconds:
            clock.advance(exchange_s)
            for h, m in enumerate(models):  # the responses finished since the last exchange
                owed[h] += per_exchange
                while owed[h] >= 1.0:
                    owed[h] -= 1.0
                    rid += 1
                    o = _outcome(rid, f"b{rng.randrange(backends)}", clock.now(), rng, mean_out)
                    t0 = time.process_time()
                    m.observe_outcome(o)
                    if h == 0:  # this process's own learning (and, shared, its record)
                        timed += time.process_time() - t0
            others = [s.row(clock.now()).to_bytes() for s in syncs[1:]]  # theirs: not timed
            t0 = time.process_time()
            raw = me.row(clock.now()).to_bytes()
            rows = {r.holder: r for r in (Row.from_bytes(b) for b in [raw, *others])}
            me.absorb(rows, clock.now())
            timed += time.process_time() - t0
            n_bytes += len(raw)
            n += 1
        spent[share] = timed / seconds
        row_bytes[share] = n_bytes // max(n, 1)
    extra = spent[True] - spent[False]
    return {
        "backends": backends,
        "holders": holders,
        "responses_per_s_each": tokens_per_s / mean_out,
        "exchange_ms": exchange_s * 1000,
        "cpu_share_without": spent[False],
        "cpu_share_with": spent[True],
        "extra_share_of_core": extra,
        "extra_us_per_token": extra / tokens_per_s * 1e6,
        "row_bytes_without": row_bytes[False],
        "row_bytes_with": row_bytes[True],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--backends", default="20,200,1000")
    ap.add_argument("--holders", default="2,8")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tokens-per-s", type=float, default=10_000.0, help="tokens one process streams")
    ap.add_argument("--us-per-token", type=float, default=95.0, help="CPU per token of the proxy path")
    ap.add_argument(
        "--learning",
        default="",
        help="holders (comma-separated) at which to measure sharing what the latency models learn "
        "from, instead of the rows (20 backends, 210-token responses, an exchange every 25 ms)",
    )
    args = ap.parse_args(argv)
    if args.learning:
        try:
            hl = [int(x) for x in args.learning.split(",")]
        except ValueError:
            print("--learning takes comma-separated integers", file=sys.stderr)
            return 2
        lruns = []
        for h in hl:
            r = measure_learning(20, h, args.seconds, args.tokens_per_s, 210, 0.025)
            r["cpu_per_token_ratio"] = (args.us_per_token + r["extra_us_per_token"]) / args.us_per_token
            lruns.append(r)
        text = json.dumps(
            {"tokens_per_s": args.tokens_per_s, "us_per_token": args.us_per_token, "learning": lruns},
            indent=2,
        )
        if args.json:
            Path(args.json).write_text(text)
        print(text)
        return 0
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
