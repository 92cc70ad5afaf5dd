"""The upper bound for one finite run (docs/policies.md §6, "The upper bound").

:func:`slorouter.sim.upper_bound.upper_bound` holds for long runs. A short run can pass
a higher rate: its servers start empty, and work due after the last arrival is done in
the drain. For a finite run the same per-request floors give a necessary condition
instead: a rate ``R`` can pass on ``m`` servers only if, for every time ``T``, the work
the good requests must have done by ``T`` fits in ``m·(T − first arrival)``.

* A latency request must have its first ``J(T)`` tokens by ``T`` (those whose deadline
  ``a + TTFT + (j−1)·TPOT`` is ``≤ T``); the floor of those ``J`` tokens is the floor of
  a request with output ``J`` (the derivation applies to any prefix of its tokens).
* A deadline request is due whole at ``a + deadline``; best effort at the end of the
  run (the simulator's ``drain_s`` after the last arrival).
* Each tier may drop its ``1 − a`` most expensive requests, chosen anew for each ``T``
  (a relaxation: a real run drops one set for all ``T``), and each ``T`` may use its own
  split of ``c0`` (each gives a valid floor).

:func:`finite_ok` checks the condition at one rate on a grid of ``T``: a rate the
simulator passed must satisfy it. :func:`finite_bound` searches for the highest rate
that does; as the run grows it tends to the long-run bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from slorouter.sim.scenario import Scenario
from slorouter.sim.scenario_workload import Workload
from slorouter.sim.upper_bound import Arr, Lam, Mask, Shares, StepFloor, min_prompt, request_shares
from slorouter.values import SloClass

LAMS: tuple[Lam, ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1 / 3, 1 / 3, 1 / 3))
AFTER_LAST_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # T grid after the last arrival


@dataclass(frozen=True, slots=True)
class RunWork:
    """A generated workload's requests at rate 1, as the finite-run condition needs them."""

    fl: StepFloor
    arrival: Arr  # at 1 request/s; at rate R it is arrival / R
    prompt: Arr
    output: Arr
    tier: np.ndarray[Any, np.dtype[np.int64]]
    n_tiers: int
    ttft: Arr  # latency requests (inf otherwise)
    tpot: Arr
    deadline: Arr  # deadline/workflow requests (inf otherwise)
    best_effort: Mask


def run_work(scn: Scenario, wl: Workload, rate: float) -> RunWork:
    """``wl`` was generated at ``rate`` (its arrivals are scaled back to rate 1)."""
    n = len(wl)
    ttft = np.full(n, np.inf)
    tpot = np.zeros(n)
    deadline = np.full(n, np.inf)
    be = np.zeros(n, dtype=bool)
    for i, v in enumerate(wl.variant):
        s = v.slo
        if s.slo_class is SloClass.LATENCY and s.ttft_s is not None:
            ttft[i] = s.ttft_s
            tpot[i] = s.tpot_s or 0.0
        elif s.slo_class in (SloClass.DEADLINE, SloClass.WORKFLOW) and s.deadline_s is not None:
            deadline[i] = s.deadline_s
        else:
            be[i] = True
    return RunWork(
        StepFloor.of(scn.profile, min_prompt(scn)),
        np.asarray(wl.arrival) * rate,
        np.asarray(wl.prompt, dtype=np.float64),
        np.asarray(wl.output, dtype=np.float64),
        np.asarray(wl.tier, dtype=np.int64),
        len(wl.tiers),
        ttft,
        tpot,
        deadline,
        be,
    )


def due_shares(rw: RunWork, rate: float, t: float, drain_s: float) -> tuple[Shares, Mask]:
    """Floors of the work each request must have done by ``t`` if it is good, and the
    mask of requests with anything due."""
    a = rw.arrival / rate
    lat = np.isfinite(rw.ttft)
    with np.errstate(invalid="ignore", divide="ignore"):
        since = t - a - rw.ttft
        j = np.where(rw.tpot > 0, np.floor(since / np.where(rw.tpot > 0, rw.tpot, 1.0) + 1e-9) + 1, rw.output)
    j = np.where(lat & (since >= -1e-12), np.clip(j, 1, rw.output), 0.0)
    end = a[-1] + drain_s
    whole = (np.isfinite(rw.deadline) & (a + rw.deadline <= t)) | (rw.best_effort & (end <= t))
    n = np.where(lat, j, np.where(whole, rw.output, 0.0))
    due = n > 0
    nn = np.maximum(n, 1.0)
    window = np.where(
        lat, rw.ttft + (nn - 1) * rw.tpot, np.where(np.isfinite(rw.deadline), rw.deadline, np.inf)
    )
    return request_shares(rw.fl, rw.prompt, nn, window, rw.ttft), due


def _kept(costs: Arr, tier: np.ndarray[Any, Any], drop: np.ndarray[Any, Any], n_tiers: int) -> float:
    total = 0.0
    for k in range(n_tiers):
        c = costs[tier == k]
        d = int(drop[k])
        if d >= c.size:
            continue
        if d > 0:
            c = np.partition(c, c.size - d)[: c.size - d]
        total += float(c.sum())
    return total


def finite_ok(
    rw: RunWork, rate: float, servers: int, attainment: float = 0.9, drain_s: float = 120.0
) -> bool:
    """False when no router can make every tier attain ``attainment`` at ``rate`` on
    this run (module docs): the work due by some ``T`` exceeds ``servers·(T − a_0)``."""
    a = rw.arrival / rate
    counts = np.bincount(rw.tier, minlength=rw.n_tiers)
    drop = np.floor((1.0 - attainment) * counts + 1e-9).astype(np.int64)
    last = float(a[-1])
    times = sorted(
        {last + d for d in (*AFTER_LAST_S, drain_s) if d <= drain_s} | {a[0] + 0.5 * (last - a[0])}
    )
    for t in times:
        sh, due = due_shares(rw, rate, t, drain_s)
        cap = servers * (t - a[0])
        for lam in LAMS:
            cost = np.where(due, sh.cost(rw.fl.c0, lam), 0.0)
            if _kept(cost, rw.tier, drop, rw.n_tiers) > cap + 1e-9:
                return False
    return True


def finite_bound(
    rw: RunWork, servers: int, attainment: float = 0.9, drain_s: float = 120.0, hi: float = 1e4
) -> float:
    """The highest rate (requests/s per server) :func:`finite_ok` allows, by bisection
    on a log scale to 1 % (the condition is not proven monotone in the rate: the test of
    a measured goodput uses :func:`finite_ok` at that rate)."""
    lo_r, hi_r = 1e-3, hi
    if finite_ok(rw, hi_r * servers, servers, attainment, drain_s):
        return math.inf
    while hi_r / lo_r > 1.01:
        mid = math.sqrt(lo_r * hi_r)
        if finite_ok(rw, mid * servers, servers, attainment, drain_s):
            lo_r = mid
        else:
            hi_r = mid
    return lo_r
