"""Gain density: the order in which ``tempo`` serves waiting work (Tempo/JITServe).

A request's **expected gain** is the service gain it brings when it meets its objective
(:func:`slojudge.gain.value` of its prompt and its output bound — a decode token worth
more than a prefill token — times its tier's weight; the judge that scores finished
requests uses the same function). A workflow call carries the gain of the whole longest
path still ahead of its workflow (``RequestInfo.path_stages`` stages, each worth what this
call is: the later calls' sizes are not known yet), so every call of a workflow that has
more left to win is served before a lone call of the same size, and the calls of one
stage — a fan-out — share one priority.

Its **predicted service time** is what it would take on the best of the servers it may
use *now*: prefill plus ``output_bound`` steps at that server's load with it placed (the
latency model's conservative pace). **Density** = gain ÷ time, on a log scale in 10 %
buckets (:data:`BUCKET` — the time is an estimate; within a bucket the queue orders by
slack). Pure functions of the request and a :class:`~slorouter.state.snapshot.Snapshot`,
used by the admission core live and offline alike.
"""

from __future__ import annotations

import math
from typing import Final

from slojudge.gain import value
from slorouter.state.snapshot import Snapshot
from slorouter.values import RequestInfo

BUCKET: Final = math.log(1.1)  # densities within 10 % share a bucket
_PROBE: Final = 16  # servers looked at for the best service time (a push, not per token)


def expected_gain(request: RequestInfo) -> float:
    """The service gain ``request`` brings (with its workflow's path still ahead) if it
    meets its objective."""
    return (
        value(request.prompt_tokens, request.output_bound) * request.tier.weight * max(1, request.path_stages)
    )


def service_time(request: RequestInfo, snapshot: Snapshot) -> float:
    """Predicted seconds from dispatch to the last token on the best of (at most 16 of)
    the servers of the request's tier, else of the fleet, at their load now (0: none)."""
    pool = snapshot.eligible(request.tier.name) or snapshot.eligible(None)
    lat = snapshot.latency
    best = math.inf
    for b in pool[:_PROBE]:
        load = snapshot.loads.get(b.id)
        running = load.running if load is not None else 0
        kv = load.prompt_tokens + load.output_tokens if load is not None else 0
        step = lat.step_time(b.id, running + 1, kv + request.prompt_tokens)
        t = lat.prefill_time(b.id, request.prompt_tokens) + max(1, request.output_bound) * step
        best = min(best, t)
    return 0.0 if best == math.inf else best


def density_bucket(request: RequestInfo, snapshot: Snapshot) -> int:
    """``expected_gain / service_time`` on a log scale, 10 % per bucket (higher = denser)."""
    d = expected_gain(request) / max(service_time(request, snapshot), 1e-9)
    return math.floor(math.log(max(d, 1e-300)) / BUCKET)


class CompletionGap:
    """The starvation guard of the gain order: how close to its latest useful start a
    request must be to go before denser work — the expected wait for the next completion
    on the servers it may use (the fleet's mean gap between completions, EWMA 1/8, × the
    fleet ÷ those servers): tried at this wake-up, or late by the next."""

    __slots__ = ("fleet", "last", "mean")

    def __init__(self) -> None:
        self.mean = 0.0
        self.fleet = 1
        self.last: float | None = None

    def on_completion(self, now: float, fleet: int) -> None:
        """A request finished at ``now`` somewhere in a fleet of ``fleet`` servers."""
        if self.last is not None and now >= self.last:
            dt = now - self.last
            self.mean = dt if self.mean == 0.0 else self.mean + (dt - self.mean) / 8
        self.last = now
        self.fleet = max(1, fleet)

    def guard(self, servers: int) -> float:
        return self.mean * self.fleet / max(1, servers)
