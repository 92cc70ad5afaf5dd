"""Arrival processes: when each unit of work (a request or a workflow) arrives.

YAML (``arrival:`` in a workload)::

    {process: poisson, rate: 8}                      # exponential gaps, mean 1/rate
    {process: gamma, rate: 8, burstiness: 0.5}       # as vllm bench serve --burstiness:
                                                     #   gap ~ Gamma(shape=b, scale=1/(rate·b));
                                                     #   b < 1 burstier, b > 1 smoother, b = 1 Poisson
    {process: constant, rate: 8}                     # one every 1/rate s
    {process: concurrency, concurrency: 16}          # closed loop: N users, each sends when its last finished
    {process: trace, path: traces/splitwise_conv.csv, rate: 8, start_s: 0, window_s: 600}
                                                     # real inter-arrival pattern; gaps scaled so that
                                                     # the mean rate is `rate` (or by `speedup`, default 1);
                                                     # the window loops when the run is longer

The first arrival is at offset 0. Offsets are seconds from the start of the run.
The open-loop processes never look at responses (that is what makes them open-loop).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadgen import traces
from loadgen.yamlcheck import Node

PROCESSES = ("poisson", "gamma", "constant", "concurrency", "trace")


@dataclass(frozen=True, slots=True)
class ArrivalSpec:
    process: str
    rate: float | None = None  # requests (units) per second; None for concurrency
    burstiness: float = 1.0
    concurrency: int | None = None
    trace: traces.Trace | None = None
    speedup: float = 1.0

    @property
    def closed_loop(self) -> bool:
        return self.process == "concurrency"

    def with_rate(self, rate: float) -> ArrivalSpec:
        return ArrivalSpec(self.process, rate, self.burstiness, self.concurrency, self.trace, self.speedup)

    def with_concurrency(self, n: int) -> ArrivalSpec:
        return ArrivalSpec(self.process, self.rate, self.burstiness, n, self.trace, self.speedup)

    @property
    def offered_rate(self) -> float | None:
        """Mean arrivals per second this process offers (None for closed loop)."""
        if self.process == "trace" and self.trace is not None and self.rate is None:
            return self.trace.native_rate * self.speedup
        return self.rate

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"process": self.process, "rate": self.offered_rate}
        if self.process == "gamma":
            out["burstiness"] = self.burstiness
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.trace is not None:
            out |= {"trace": self.trace.path, "trace_requests": len(self.trace)}
        return out


def parse_arrival(node: Node, base_dir: Path) -> ArrivalSpec:
    node.check_keys(
        {"process", "rate", "burstiness", "concurrency", "path", "speedup", "start_s", "window_s"}
    )
    process = node.str_("process", choices=PROCESSES)
    if process == "concurrency":
        return ArrivalSpec(process, concurrency=node.int_("concurrency", ge=1))
    if process == "trace":
        path = traces.resolve(node.str_("path"), base_dir, node.file, node.sub("path"))
        trace = traces.load(path)
        start = node.num("start_s", 0.0, ge=0)
        window = node.opt_num("window_s", gt=0)
        if start or window is not None:
            try:
                trace = trace.window(start, window)
            except ValueError as exc:
                raise node.fail("window_s", str(exc)) from None
        rate = node.opt_num("rate", gt=0)
        return ArrivalSpec(process, rate=rate, trace=trace, speedup=node.num("speedup", 1.0, gt=0))
    rate = node.num("rate", gt=0)
    burst = node.num("burstiness", 1.0, gt=0) if process == "gamma" else 1.0
    return ArrivalSpec(process, rate=rate, burstiness=burst)


def offsets(spec: ArrivalSpec, rng: random.Random) -> Iterator[tuple[float, int | None]]:
    """Endless ``(offset_s, trace_row or None)`` pairs in increasing order (open loop only)."""
    if spec.closed_loop:
        raise ValueError("a closed-loop (concurrency) process has no arrival schedule")
    if spec.process == "trace":
        yield from _trace_offsets(spec)
        return
    assert spec.rate is not None
    t = 0.0
    if spec.process == "constant":
        n = 0
        while True:
            yield n / spec.rate, None
            n += 1
    shape = spec.burstiness if spec.process == "gamma" else 1.0
    scale = 1.0 / (spec.rate * shape)
    while True:
        yield t, None
        t += rng.gammavariate(shape, scale)


def _trace_offsets(spec: ArrivalSpec) -> Iterator[tuple[float, int | None]]:
    trace = spec.trace
    assert trace is not None
    factor = trace.native_rate / spec.rate if spec.rate is not None else 1.0 / spec.speedup
    # one loop of the trace lasts span + one mean gap, so the rate holds across the seam
    period = (trace.span + trace.span / (len(trace) - 1)) * factor
    base = 0.0
    while True:
        for i, t in enumerate(trace.times):
            yield base + t * factor, i
        base += period
