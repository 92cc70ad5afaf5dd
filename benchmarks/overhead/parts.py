#!/usr/bin/env python3
"""The parts of slorouter's per-token and per-request path, timed one by one in-process
(CPU time, best of 5): what docs/overhead.md's breakdown reports beside the CPU the
benchmark measures for the whole process (``bench_overhead.py``).

Per token (one engine read holding one vLLM chat chunk, as at 20 ms pacing): the SSE
observer and the tracker's ``on_tokens`` (aiohttp's client and server machinery and the
system calls are not in these figures; the benchmark's whole-process and kernel time
are). Per request: the tracker's
lifecycle (arrival, dispatch, tokens, usage, finish) without and with each outcome
listener (latency model, length model, request metrics, SLO/gain metrics), for a
non-streaming request (16 tokens in one call) and a 64-token stream.

Usage: ``python -m benchmarks.overhead.parts [--tier best_effort|latency]``
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from slorouter.app.parts import build_models, configured_backends
from slorouter.clock import RealClock
from slorouter.config.loader import parse_config
from slorouter.metrics.gain import GainMetrics
from slorouter.metrics.requests import RequestMetrics
from slorouter.proxy.sse import Flavor, SseObserver
from slorouter.state.backends import Health
from slorouter.state.membership import Membership
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Status

EVENT = (
    b'data: {"id":"chatcmpl-8695c0bdb61cae90","object":"chat.completion.chunk","created":1834755136,'
    b'"model":"sim-llama","choices":[{"index":0,"delta":{"content":" fame"},"logprobs":null,'
    b'"finish_reason":null,"token_ids":null}]}\n\n'
)


def best_us(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    for _ in range(max(1, n // 10)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return best


def build(tier_class: str) -> tuple[Tracker, Any, dict[str, Callable[[Any], None]]]:
    tier: dict[str, Any] = {"name": "t", "class": tier_class}
    if tier_class == "latency":
        tier.update(ttft_ms=1000, tpot_ms=50)
    raw = {
        "tiers": [tier],
        "backends": [
            {"name": "e0", "url": "http://127.0.0.1:1"},
            {"name": "e1", "url": "http://127.0.0.1:2"},
        ],
        "routing": {"allow_anonymous": True},
    }
    cfg = parse_config(raw, "<parts>")
    clock = RealClock()
    backends = Membership(configured_backends(cfg), cfg.tier_values).build()
    latency, lengths = build_models(cfg, clock)
    tracker = Tracker(clock, backends, Health(b.id for b in backends.backends), latency, lengths)
    listeners: dict[str, Callable[[Any], None]] = {
        "latency model": latency.observe_outcome,
        "length model": lengths.observe_outcome,
        "request metrics": RequestMetrics(tracker).observe,
        "SLO/gain metrics": GainMetrics().observe,
    }
    return tracker, backends.tiers[0], listeners


def per_token(tier_class: str) -> dict[str, float]:
    tracker, tier, _ = build(tier_class)
    info = RequestInfo(1, tier, tracker.clock.now(), 20, 10**9, 10**9, "m", True)
    tracker.on_arrival(info)
    tracker.on_dispatch(1, "e0")
    out: dict[str, float] = {}
    obs = SseObserver(Flavor.OPENAI, lambda _n: None, lambda _p, _c: None, True)
    out["SSE observer"] = best_us(lambda: obs.feed(EVENT), 20000)
    out["tracker on_tokens"] = best_us(lambda: tracker.on_tokens(1, 1), 20000)
    obs2 = SseObserver(Flavor.OPENAI, partial(tracker.on_tokens, 1), lambda _p, _c: None, True)
    out["both, one read"] = best_us(lambda: obs2.feed(EVENT), 20000)
    return out


def per_request(tier_class: str) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for name in (
        "tracker alone",
        "latency model",
        "length model",
        "request metrics",
        "SLO/gain metrics",
        "all",
    ):
        tracker, tier, listeners = build(tier_class)
        for lname, fn in listeners.items():
            if name in (lname, "all"):
                tracker.add_listener(fn)
        rids = itertools.count(1)

        def one(tokens: int, tracker: Tracker = tracker, tier: Any = tier, rids: Any = rids) -> None:
            rid = next(rids)
            info = RequestInfo(rid, tier, tracker.clock.now(), 20, 64, 64, "m", tokens > 1)
            tracker.on_arrival(info)
            tracker.on_dispatch(rid, "e0" if rid % 2 else "e1")
            if tokens > 1:
                for _ in range(tokens):
                    tracker.on_tokens(rid, 1)
                tracker.on_usage(rid, 20, tokens)
            else:
                tracker.on_tokens(rid, 16)
                tracker.on_usage(rid, 20, 16)
            tracker.on_finish(rid, Status.OK)

        out[name] = (best_us(partial(one, 1), 2000), best_us(partial(one, 64), 500))
    base = out["tracker alone"]
    return {k: (v if k == "tracker alone" else (v[0] - base[0], v[1] - base[1])) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--tier", choices=("best_effort", "latency"), default="best_effort")
    a = ap.parse_args(argv)
    print(f"per token ({a.tier} tier), µs CPU:")
    for k, v in per_token(a.tier).items():
        print(f"  {v:6.2f}  {k}")
    print(f"per request ({a.tier} tier), µs CPU: non-streaming (16 tokens) / 64-token stream")
    for k, (ns, st) in per_request(a.tier).items():
        extra = "" if k == "tracker alone" else " (listener, above the tracker alone)"
        print(f"  {ns:6.1f} / {st:6.1f}  {k}{extra}")


if __name__ == "__main__":
    main()
