"""Handing the scaler from one leader to the next (pure: no I/O; times are passed in).

The leader publishes its scaler's state (:func:`export_state`) with its row at every
exchange; every other process keeps the newest it saw. A process that becomes the leader
continues from it (:func:`resume`): per tier the desired count, the rate's level and
trend (and how long they were learned), when the tier last grew, last rose, last asked
and last deferred, its decision counts; per server when it was moved and since when it
is empty. Times travel as Unix time (``wall``) and come back on the new leader's clock,
so the cooldowns run on from where they were: no server is asked for twice, none given
back early. Whatever the new leader cannot know (a decision of the old one in the last
exchange before it died) errs on the side of keeping servers: a server's emptiness it has
not seen counts from the take-over, so ``idle_s`` starts again.
"""

from __future__ import annotations

import math
from typing import Any

from slorouter.autoscale.scaler import Scaler
from slorouter.autoscale.signal import RateForecast
from slorouter.state.snapshot import Snapshot

STATE_VERSION = 1


def export_state(scaler: Scaler, now: float, wall: float) -> dict[str, Any]:
    """The scaler's state as JSON types (times as Unix time)."""

    def w(t: float | None) -> float | None:
        return None if t is None or math.isinf(t) else round(wall - (now - t), 3)

    tiers: dict[str, Any] = {}
    for name, st in scaler.tiers.items():
        tiers[name] = {
            "desired": st.desired,
            "level": st.rate.level,
            "trend": st.rate.trend,
            "age_s": round(st.rate.age(now), 3),
            "grew_at": w(st.grew_at),
            "last_up": w(st.last_up),
            "asked_at": w(st.asked_at),
            "last_defer": w(st.last_defer),
            "deferrals": st.deferrals,
            "counts": dict(st.counts),
            # what followers show (GET /admin/autoscale)
            "current": st.current,
            "need": st.need,
            "keep": st.keep,
            "sizing_rate": st.sizing_rate,
            "cost_s": None if math.isinf(st.cost_s) else st.cost_s,
            "queued": st.queued,
        }
    return {
        "v": STATE_VERSION,
        "at": round(wall, 3),
        "seq": scaler._seq,
        "tiers": tiers,
        "moved_at": {b: w(t) for b, t in scaler._moved_at.items()},
        "empty_since": {b: w(t) for b, t in scaler._empty_since.items()},
    }


def resume(scaler: Scaler, state: Any, now: float, wall: float) -> bool:
    """Continue from a published state (False: not one this version understands)."""
    if (
        not isinstance(state, dict)
        or state.get("v") != STATE_VERSION
        or not isinstance(state.get("tiers"), dict)
    ):
        return False

    def t(x: Any, default: float = -math.inf) -> float:
        return min(now, now - (wall - float(x))) if isinstance(x, int | float) else default

    for name, d in state["tiers"].items():
        st = scaler.tiers.get(name)
        if st is None or not isinstance(d, dict):
            continue
        desired = d.get("desired")
        st.desired = int(desired) if isinstance(desired, int) else None
        st.rate.resume(
            float(d.get("level") or 0.0), float(d.get("trend") or 0.0), float(d.get("age_s") or 0.0), now
        )
        st.grew_at = t(d.get("grew_at"))
        st.last_up = t(d.get("last_up"))
        st.asked_at = t(d["asked_at"]) if isinstance(d.get("asked_at"), int | float) else None
        st.last_defer = t(d.get("last_defer"))
        st.deferrals = int(d.get("deferrals") or 0)
        counts = d.get("counts")
        st.counts = {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}
        st.emitted = None
    moved = state.get("moved_at")
    scaler._moved_at = {str(b): t(x) for b, x in moved.items()} if isinstance(moved, dict) else {}
    empty = state.get("empty_since")
    scaler._empty_since = {str(b): t(x, now) for b, x in empty.items()} if isinstance(empty, dict) else {}
    return True


def rebase(scaler: Scaler, snap: Snapshot, *, fresh: bool) -> None:
    """Count arrivals from this snapshot on (a new leader: the requests in the system now
    arrived before it took over). ``fresh``: no state was resumed — the rates start
    learning now (their warm-up mean must not include time nobody counted)."""
    in_system = scaler._in_system(snap)
    cfg = scaler.cfg
    for name, st in scaler.tiers.items():
        st.counted = st.finished + in_system.get(name, 0)
        if fresh:
            st.rate = RateForecast(cfg.rate_half_life_s, cfg.trend_half_life_s)
            st.rate.start(snap.now)
        else:
            st.rate.skip(snap.now)
