"""Scaling rules on server counts: which empty servers move between tier bins, how many
to ask for, which idle ones are given back. Pure functions; the caller (the scaler,
:mod:`slorouter.autoscale.scaler`, in the router or the fleet simulator) acts on the
plan — moving a server is ``BackendSet.with_tiers(plan.move)``.

Rules (PolyServe's: pack, fill from the tight end, give emptied servers back):

* Each tier has a **target** (:class:`TierTarget`): ``need`` servers (fewer: it is short)
  and ``keep`` servers (more: the surplus may go), ``keep >= need``. The band between
  them is the hysteresis: a count inside it is left alone, so a steady load never makes
  a tier flap between two counts.
* **need** of a tier from its load = ``ceil(rate · cost / utilisation)`` servers
  (:func:`servers_needed`), ``cost`` being the fluid model's server-seconds per request
  at the tier's TPOT (:func:`slorouter.models.fluid.tier_cost`).
* **move** before adding: an *empty* server of a tier holding more than it keeps goes to
  a tier short of servers (the tightest short tier first, the loosest donor first, the
  longest-empty server first). Only tiers in ``donors`` give (the caller's cooldown) and
  ``pinned`` servers stay (recently moved).
* **add** what is still missing, within ``max_total`` (tight tiers first).
* **release** servers empty for at least ``idle_s`` in tiers (of ``donors``) that still
  hold more than they keep, never below ``min_total`` servers in all.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from slorouter.models.fluid import Lengths, tier_cost
from slorouter.models.static import EngineLimits, LinearStep

MIN_LOAD = 0.01  # servers' worth of work below which an idle tier needs none


@dataclass(frozen=True, slots=True)
class TierTarget:
    need: int  # fewer servers than this: the tier is short
    keep: int  # more than this: the surplus may be moved away or released (keep >= need)


@dataclass(frozen=True, slots=True)
class ScalePlan:
    need: Mapping[str, int]
    keep: Mapping[str, int]
    have: Mapping[str, int]
    move: Mapping[str, str] = field(default_factory=dict)  # server id -> new tier bin
    moved_from: Mapping[str, str] = field(default_factory=dict)  # server id -> its tier before
    add: Mapping[str, int] = field(default_factory=dict)  # tier -> servers to ask for
    release: tuple[str, ...] = ()  # server ids to give back
    released_from: Mapping[str, str] = field(default_factory=dict)  # server id -> its tier

    @property
    def changes(self) -> bool:
        return bool(self.move or self.add or self.release)

    def count_after(self, tier: str) -> int:
        """Servers of ``tier`` once the moves and releases are applied (adds not)."""
        n = self.have.get(tier, 0)
        n += sum(1 for t in self.move.values() if t == tier)
        n -= sum(1 for t in self.moved_from.values() if t == tier)
        n -= sum(1 for t in self.released_from.values() if t == tier)
        return n


def servers_needed(rate_rps: float, cost_s: float, utilization: float, *, busy: bool = False) -> int:
    """``ceil(rate · cost / utilization)``: servers that carry the tier's fluid load at
    the target utilisation; at least 1 while the tier has work (``busy``: requests in
    the system) or more than :data:`MIN_LOAD` servers' worth of it; 0 otherwise.
    An infinite cost (no batch meets the TPOT) needs 1 server while there is work."""
    if math.isinf(cost_s):
        return 1 if rate_rps > 0 or busy else 0
    load = rate_rps * cost_s / utilization
    if load < MIN_LOAD and not busy:
        return 0
    return max(1, math.ceil(load - 1e-9))


def tier_costs(
    coef: LinearStep, limits: EngineLimits, tpots: Mapping[str, float | None], lengths: Lengths
) -> dict[str, float]:
    """Server-seconds per request of each tier (``None`` TPOT: best effort)."""
    return {name: tier_cost(coef, limits, tau, lengths)[2] for name, tau in tpots.items()}


def plan(
    bins: Mapping[str, Sequence[str]],
    empty_for: Mapping[str, float],
    targets: Mapping[str, TierTarget],
    *,
    order: Sequence[str] | None = None,
    idle_s: float = 60.0,
    min_total: int = 1,
    max_total: int | None = None,
    donors: Collection[str] | None = None,
    pinned: Collection[str] = (),
) -> ScalePlan:
    """A plan for ``bins`` (tier -> server ids). ``empty_for[id]`` = seconds the server has
    held no request (absent or negative: busy); ``order`` = tiers tight → loose (default:
    the order of ``bins``); ``donors`` = tiers allowed to give servers away (default: all);
    ``pinned`` = servers that neither move nor go."""
    tiers = list(order or bins)
    have = {t: len(bins.get(t, ())) for t in tiers}
    need = {t: targets[t].need if t in targets else 0 for t in tiers}
    keep = {t: max(need[t], targets[t].keep) if t in targets else 0 for t in tiers}
    give = set(tiers if donors is None else donors)
    empty = {
        t: [s for s in bins.get(t, ()) if empty_for.get(s, -1.0) >= 0.0 and s not in pinned] for t in tiers
    }
    for t in tiers:  # most-idle first: those are the ones to move or give back
        empty[t].sort(key=lambda s: -empty_for[s])
    count = dict(have)
    move: dict[str, str] = {}
    moved_from: dict[str, str] = {}
    for short in tiers:  # tight first
        for donor in reversed(tiers):  # loosest donors first
            if donor == short or donor not in give:
                continue
            while count[short] < need[short] and count[donor] > keep[donor] and empty[donor]:
                sid = empty[donor].pop(0)
                move[sid] = short
                moved_from[sid] = donor
                count[donor] -= 1
                count[short] += 1
    add = {t: need[t] - count[t] for t in tiers if need[t] > count[t]}
    total = sum(count.values())
    if max_total is not None:
        room = max(0, max_total - total)
        for t in tiers:
            if t in add:
                add[t] = min(add[t], room)
                room -= add[t]
        add = {t: n for t, n in add.items() if n > 0}
    release: list[str] = []
    released_from: dict[str, str] = {}
    for t in reversed(tiers):
        if t not in give:
            continue
        for sid in list(empty[t]):
            if count[t] <= keep[t] or total - len(release) <= min_total:
                break
            if empty_for[sid] >= idle_s:
                release.append(sid)
                released_from[sid] = t
                count[t] -= 1
    return ScalePlan(need, keep, have, move, moved_from, add, tuple(release), released_from)
