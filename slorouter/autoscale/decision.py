"""What a scaling tick returns: the moves, the releases and one decision per tier that
changed (the webhook body, docs/autoscaling.md). Emitted by the per-tier scaler
(:mod:`slorouter.autoscale.scaler`) and the baselines (:mod:`slorouter.autoscale.baselines`);
acted on live by :mod:`slorouter.actuation` and offline by :mod:`slorouter.fleetsim.scaling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slorouter.autoscale.plan import ScalePlan


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """One tier's decision: the webhook body (docs/autoscaling.md)."""

    tier: str
    current: int  # servers of the tier now (moves and releases of this tick applied)
    desired: int  # servers the tier should have
    add: int  # new servers this decision asks for (beyond those asked for before)
    remove: tuple[str, ...]  # servers given back (drained and removed from the router)
    reason: str
    decision_id: str
    at: float  # the scaler's clock

    def body(self, wall_at: float) -> dict[str, Any]:
        """The JSON object sent; ``wall_at`` = ``at`` as Unix time."""
        return {
            "tier": self.tier,
            "current": self.current,
            "desired": self.desired,
            "add": self.add,
            "remove": list(self.remove),
            "reason": self.reason,
            "decision_id": self.decision_id,
            "at": round(wall_at, 3),
        }


@dataclass(frozen=True, slots=True)
class TickResult:
    plan: ScalePlan
    move: Mapping[str, str]  # server id -> new tier (apply: BackendSet.with_tiers)
    release: tuple[str, ...]  # servers to drain and remove (they are empty)
    decisions: tuple[ScaleDecision, ...]
