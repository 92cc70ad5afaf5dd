"""The scaler at work in the router: a background task ticks the pure
:class:`~slorouter.autoscale.scaler.Scaler` every ``autoscale.interval_s`` and acts on
its output; a thin policy wrapper tells it when an on-time request fit nowhere.

``mode: webhook`` — moves are applied (:meth:`FleetManager.move`), released servers are
drained and removed (they are empty: at once), and every decision goes to the webhooks
(:class:`~slorouter.actuation.webhook.WebhookSender`, in the background).
``mode: advisory`` — nothing changes in the fleet and nothing is sent: decisions are
logged (``would ...``), kept for ``GET /admin/autoscale`` and exported as gauges.

A tick is synchronous and cheap (O(servers + tiers)); it never waits for the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from slorouter.actuation.fleet import FleetManager
from slorouter.actuation.webhook import WebhookSender
from slorouter.admission.priority import priority
from slorouter.autoscale.decision import ScaleDecision, TickResult
from slorouter.autoscale.scaler import Scaler
from slorouter.clock import Clock
from slorouter.config.autoscale import AutoscaleConfig, ScaleMode
from slorouter.policy.base import Policy
from slorouter.state.snapshot import Snapshot
from slorouter.state.tracker import Tracker
from slorouter.values import Decision, Defer, Outcome, RequestInfo, Scope

log = logging.getLogger("slorouter.autoscale")


class DeferWatch:
    """A policy as it is, plus: an on-time request it defers (its latest useful start,
    :func:`~slorouter.admission.priority.priority`, is still ahead) is reported to the
    scaler's fast trigger."""

    def __init__(self, inner: Policy, scaler: Scaler) -> None:
        self.inner = inner
        self.scaler = scaler
        self.kind = inner.kind

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        d = self.inner.select(request, snapshot)
        if isinstance(d, Defer) and priority(request, snapshot) >= snapshot.now:
            self.scaler.on_defer(request.tier.name, snapshot.now)
        return d

    def on_dispatch(self, request: RequestInfo, backend_id: str) -> None:
        self.inner.on_dispatch(request, backend_id)

    def on_finish(self, outcome: Outcome) -> None:
        self.inner.on_finish(outcome)

    def scope(self, request: RequestInfo, snapshot: Snapshot) -> Scope:
        return self.inner.scope(request, snapshot)

    def shared_state(self) -> Any:
        return self.inner.shared_state()

    def adopt_shared(self, states: list[Any]) -> None:
        self.inner.adopt_shared(states)


class ScaleRunner:
    def __init__(
        self,
        scaler: Scaler,
        cfg: AutoscaleConfig,
        fleet: FleetManager,
        tracker: Tracker,
        clock: Clock,
        sender: WebhookSender | None = None,
        keep: int = 200,
    ) -> None:
        self.scaler = scaler
        self.cfg = cfg
        self.fleet = fleet
        self.tracker = tracker
        self.clock = clock
        self.sender = sender
        self.acting = cfg.mode is ScaleMode.WEBHOOK
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)  # the last decisions' bodies
        self._task: asyncio.Task[None] | None = None

    def wall(self, at: float) -> float:
        """A clock time as Unix time."""
        return time.time() - (self.clock.now() - at)

    def tick(self) -> TickResult:
        result = self.scaler.tick(self.tracker.snapshot(), self.fleet.leaving())
        if self.acting:
            if result.move:
                self.fleet.move(result.move)
            for bid in result.release:
                self.fleet.remove(bid, "scaler")
        for d in result.decisions:
            body = d.body(self.wall(d.at))
            self.recent.append(body)
            self._log(d)
            if self.acting and self.sender is not None:
                self.sender.submit(body)
        return result

    def _log(self, d: ScaleDecision) -> None:
        what = f"tier {d.tier}: {d.current} -> {d.desired} servers"
        if d.add:
            what += f", ask for {d.add}"
        if d.remove:
            what += f", give back {', '.join(d.remove)}"
        if self.acting:
            log.info("scaling %s (%s) [%s]", what, d.reason, d.decision_id)
        else:
            log.info("advisory: would scale %s (%s) [%s]", what, d.reason, d.decision_id)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="autoscale")

    async def stop(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval_s)
            try:
                self.tick()
            except Exception:  # a bug in a tick must not stop scaling for good
                log.exception("autoscale tick failed")

    def describe(self) -> dict[str, Any]:
        now = self.clock.now()
        tiers = {}
        for name, st in self.scaler.tiers.items():
            tiers[name] = {
                "current": st.current,
                "desired": st.desired if st.desired is not None else st.current,
                "need": st.need,
                "keep": st.keep,
                "pending": max(0, (st.desired or 0) - st.current),
                "rate_rps": round(st.rate.level, 4),
                "sizing_rate_rps": round(st.sizing_rate, 4),
                "cost_server_s": round(st.cost_s, 6) if st.cost_s != float("inf") else None,
                "headroom_servers": round(st.headroom, 3),
                "queued": st.queued,
                "attainment": st.attainment.value(now),
                "deferrals": st.deferrals,
                "trigger": st.trigger,
            }
        out: dict[str, Any] = {
            "mode": self.cfg.mode.value,
            "interval_s": self.cfg.interval_s,
            "tiers": tiers,
            "decisions": list(self.recent),
        }
        if self.sender is not None:
            out["webhook"] = {**self.sender.stats, "waiting": self.sender.waiting()}
        return out
