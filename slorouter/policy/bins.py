"""Bins: a fleet's healthy servers grouped by the tightness of their tier (tight first),
and the two facts about a request that every bin policy needs — whether requests of some
tiers wait, and when a request's SLO stops being attainable even on an idle server.
Used by ``polyserve`` (:mod:`slorouter.policy.polyserve`), ``tempo``, ``slo-pack`` and
``static-partition``."""

from __future__ import annotations

import math
from collections.abc import Mapping

from slorouter.policy.feasibility import INF, earliest_first_token
from slorouter.state.backends import BackendSet
from slorouter.state.snapshot import Snapshot
from slorouter.values import LOOSEST, RequestInfo, SloClass, Tier, Tightness


def tier_tightness(t: Tier | None) -> Tightness:
    """The bin of a tier (a server of no known tier: the loosest)."""
    return LOOSEST if t is None else t.slo.tightness


class Bins:
    """Healthy backends grouped by the tightness of their tier, tight first."""

    __slots__ = ("bins", "taus", "tiers_of", "tpot_by_tier")

    def __init__(
        self, backends: BackendSet, healthy: frozenset[str], moved: Mapping[str, Tightness] | None = None
    ) -> None:
        groups: dict[Tightness, list[str]] = {}
        moved = moved or {}
        for b in backends.backends:
            if b.id in healthy:
                tau = moved.get(b.id)
                if tau is None:
                    tau = tier_tightness(backends.tier_by_name.get(b.tier))
                groups.setdefault(tau, []).append(b.id)
        self.tiers_of: dict[Tightness, list[str]] = {}
        for t in backends.tiers:
            self.tiers_of.setdefault(tier_tightness(t), []).append(t.name)
        self.taus = sorted(groups)
        self.bins = [tuple(groups[t]) for t in self.taus]
        self.tpot_by_tier = {
            t.name: (t.slo.tpot_s if t.slo.tpot_s is not None else INF) for t in backends.tiers
        }


def waiting(queued: Mapping[str, int], tiers: list[str] | tuple[str, ...]) -> bool:
    return any(queued.get(t, 0) > 0 for t in tiers)


def late_at(req: RequestInfo, snap: Snapshot, bid: str) -> float | None:
    """The time after which ``req`` cannot meet its SLO even alone on backend ``bid``
    (None: never, e.g. best effort)."""
    slo = req.tier.slo
    if slo.slo_class is SloClass.BEST_EFFORT:
        return None
    lat = snap.latency
    lin = lat.linear(bid)
    first = earliest_first_token(req.prompt_tokens, lin, lat.limits(bid))
    if slo.slo_class is SloClass.LATENCY:
        dl = req.ttft_deadline
        return None if math.isinf(dl) else dl - first
    dl_abs = req.deadline_at
    if dl_abs is None and slo.deadline_s is not None:
        dl_abs = req.arrival + slo.deadline_s
    if dl_abs is None:
        return None
    idle = lin.at(1, req.prompt_tokens + req.output_bound)
    return dl_abs - first - max(0, req.output_bound - 1) * idle
