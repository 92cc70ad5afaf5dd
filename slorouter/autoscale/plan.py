"""Scaling decisions: how many servers each tier bin needs, which empty servers move
between bins, which idle ones are given back, how many to ask for. Pure functions; the
caller (a background task of the router, or the fleet simulator) acts on the plan —
moving a server is ``BackendSet.with_tiers(plan.move)``.

Rules (PolyServe's: pack, fill from the tight end, give emptied servers back):

* **need** of a tier = ``ceil(rate · cost / target_util)`` servers, where ``cost`` is the
  fluid model's server-seconds per request at the tier's TPOT
  (:func:`slorouter.models.fluid.tier_cost`); at least 1 while the tier has traffic or
  requests waiting, one more while requests of the tier wait in the router queue.
* **move** before adding: an *empty* server of a tier with more servers than it needs
  goes to a tier short of servers (the tightest short tier first).
* **add** what is still missing (within ``max_backends``).
* **release** servers empty for at least ``idle_s`` in tiers that still have more than they
  need (never below ``min_backends`` in total).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from slorouter.models.fluid import Lengths, tier_cost
from slorouter.models.static import EngineLimits, LinearStep


@dataclass(frozen=True, slots=True)
class TierLoad:
    rate_rps: float  # recent arrival rate of the tier
    cost_s: float  # server-seconds per request at the tier's TPOT (fluid model)
    queued: int = 0  # requests of the tier waiting in the router queue


@dataclass(frozen=True, slots=True)
class ScalePlan:
    need: Mapping[str, int]
    have: Mapping[str, int]
    move: Mapping[str, str] = field(default_factory=dict)  # server id -> new tier bin
    add: Mapping[str, int] = field(default_factory=dict)  # tier -> servers to ask for
    release: tuple[str, ...] = ()  # server ids to give back

    @property
    def changes(self) -> bool:
        return bool(self.move or self.add or self.release)


def servers_needed(load: TierLoad, target_util: float = 0.85) -> int:
    if load.rate_rps <= 0 and load.queued <= 0:
        return 0
    if math.isinf(load.cost_s):
        return 1 + (1 if load.queued else 0)
    n = math.ceil(load.rate_rps * load.cost_s / target_util - 1e-9)
    return max(1, n) + (1 if load.queued else 0)


def tier_costs(
    coef: LinearStep, limits: EngineLimits, tpots: Mapping[str, float | None], lengths: Lengths
) -> dict[str, float]:
    """Server-seconds per request of each tier (``None`` TPOT: best effort)."""
    return {name: tier_cost(coef, limits, tau, lengths)[2] for name, tau in tpots.items()}


def plan(
    bins: Mapping[str, Sequence[str]],
    empty_for: Mapping[str, float],
    loads: Mapping[str, TierLoad],
    *,
    order: Sequence[str] | None = None,
    target_util: float = 0.85,
    idle_s: float = 60.0,
    min_backends: int = 1,
    max_backends: int | None = None,
) -> ScalePlan:
    """A plan for ``bins`` (tier -> server ids). ``empty_for[id]`` = seconds the server has
    held no request (absent or negative: busy); ``order`` = tiers tight → loose (default:
    the order of ``bins``)."""
    tiers = list(order or bins)
    have = {t: len(bins.get(t, ())) for t in tiers}
    need = {t: servers_needed(loads.get(t, TierLoad(0.0, 0.0)), target_util) for t in tiers}
    empty = {t: [s for s in bins.get(t, ()) if empty_for.get(s, -1.0) >= 0.0] for t in tiers}
    # most-idle first: those are the ones to move or give back
    for t in tiers:
        empty[t].sort(key=lambda s: -empty_for[s])
    count = dict(have)
    move: dict[str, str] = {}
    for short in tiers:  # tight first
        for donor in reversed(tiers):  # loosest donors first
            while count[short] < need[short] and count[donor] > need[donor] and empty[donor]:
                sid = empty[donor].pop(0)
                move[sid] = short
                count[donor] -= 1
                count[short] += 1
    add = {t: need[t] - count[t] for t in tiers if need[t] > count[t]}
    total = sum(count.values())
    if max_backends is not None:
        room = max(0, max_backends - total)
        for t in tiers:
            if t in add:
                add[t] = min(add[t], room)
                room -= add[t]
        add = {t: n for t, n in add.items() if n > 0}
    release: list[str] = []
    for t in reversed(tiers):
        for sid in list(empty[t]):
            if count[t] <= need[t] or total - len(release) <= min_backends:
                break
            if empty_for[sid] >= idle_s:
                release.append(sid)
                count[t] -= 1
    return ScalePlan(need, have, move, add, tuple(release))
