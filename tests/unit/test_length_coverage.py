"""The output-length bound covers what it claims on real traffic: on both Azure traces
shipped in slorouter/data (Splitwise conversation and code, 2023), replayed at their own
arrival times into the online length model, the share of requests whose output fits
under the bound is within 3 points of the bound's quantile after warm-up — for the bound
at arrival and for the bound refined as tokens arrive (``X | X > g``)."""

from __future__ import annotations

from collections import deque

import pytest

from slorouter.clock import ManualClock
from slorouter.models.lengths import build_lengths
from slorouter.sim.scenario_workload import TRACES, load_trace

WARMUP = 1000  # requests observed before coverage counts
FINISH_LAG_S = 30.0  # a request's length is learned when it finishes, not when it arrives


def replay(trace: str, q: float, refine_at: tuple[int, ...]) -> tuple[float, dict[int, tuple[float, int]]]:
    """(coverage at arrival, {g: (coverage given g tokens so far, requests that reached g)})."""
    tr = load_trace(trace)
    clock = ManualClock(0.0)
    model = build_lengths(clock, quantile=q)
    finishing: deque[tuple[float, int]] = deque()
    hits = seen = 0
    cond = {g: [0, 0] for g in refine_at}
    t0 = tr.arrived_at[0]
    for i, (at, out) in enumerate(zip(tr.arrived_at, tr.output, strict=True)):
        clock.set(at - t0)
        while finishing and finishing[0][0] <= clock.now():
            model.observe("chat", [finishing.popleft()[1]])
        if i >= WARMUP:
            seen += 1
            hits += out <= model.bound("chat", 0)
            for g in refine_at:
                if out > g:
                    cond[g][1] += 1
                    cond[g][0] += out <= model.bound("chat", g)
        finishing.append((clock.now() + FINISH_LAG_S, out))
    return hits / seen, {g: (h / n, n) for g, (h, n) in cond.items()}


@pytest.mark.parametrize("q", [0.9, 0.95])
@pytest.mark.parametrize("trace", TRACES)
def test_bound_coverage_is_within_3_points_of_its_quantile(trace: str, q: float) -> None:
    outs = sorted(load_trace(trace).output)
    # refine at the trace's own quartiles of output length, so each point has support
    gs = tuple(outs[int(p * (len(outs) - 1))] for p in (0.25, 0.5, 0.75))
    at_arrival, refined = replay(trace, q, gs)
    assert abs(at_arrival - q) <= 0.03, f"{trace} p{q * 100:g}: coverage at arrival {at_arrival:.4f}"
    for g, (cov, n) in refined.items():
        assert n >= 1000
        assert abs(cov - q) <= 0.03, f"{trace} p{q * 100:g}: coverage after {g} tokens {cov:.4f} (n={n})"
