"""The scaler at work in the router: a background task ticks the pure
:class:`~slorouter.autoscale.scaler.Scaler` every ``autoscale.interval_s`` and acts on
its output; a thin policy wrapper tells it when an on-time request fit nowhere.

``mode: webhook`` — moves are applied (:meth:`FleetManager.move`), released servers are
drained and removed (they are empty: at once), and every decision goes to the webhooks
(:class:`~slorouter.actuation.webhook.WebhookSender`, in the background). A decision
that gives servers back is sent once they are out of the set: with several router
processes that takes every process adopting the removal (one or two exchanges), so it
waits — and the decisions after it wait behind it, in order — until a tick finds them
removed (at most ``HOLD_MAX_S``: a removal that cannot finish does not stop scaling).
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
from typing import Any, Protocol

from slorouter.actuation.fleet import FleetManager
from slorouter.actuation.leadscale import SharedScaling
from slorouter.actuation.webhook import WebhookSender
from slorouter.admission.core import queue_order, wait_to_workflow_deadline
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

HOLD_MAX_S = 60.0  # longest a decision waits for the servers it gives back to be out of the set


class DeferSink(Protocol):
    def on_defer(self, tier: str, now: float) -> None: ...


class DeferWatch:
    """A policy as it is, plus: an on-time request it defers (its latest useful start,
    :func:`~slorouter.admission.priority.priority`, is still ahead) is reported to the
    scaler's fast trigger (with several router processes: to this process's
    :class:`~slorouter.autoscale.feed.LocalFeed`, which the leader's scaler sums)."""

    def __init__(self, inner: Policy, scaler: DeferSink) -> None:
        self.inner = inner
        self.scaler = scaler
        self.kind = inner.kind

    # what the admission core asks of the policy (slorouter.admission.core): the inner one's
    @property
    def queue_order(self) -> str:
        return queue_order(self.inner)

    @property
    def wait_to_workflow_deadline(self) -> bool:
        return wait_to_workflow_deadline(self.inner)

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
        shared: SharedScaling | None = None,
    ) -> None:
        """``shared``: this process is one of several router processes; it ticks the
        scaler only while it leads (:mod:`slorouter.actuation.leadscale`)."""
        self.scaler = scaler
        self.cfg = cfg
        self.fleet = fleet
        self.tracker = tracker
        self.clock = clock
        self.sender = sender
        self.acting = cfg.mode is ScaleMode.WEBHOOK
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)  # the last decisions' bodies
        self.shared = shared
        self._task: asyncio.Task[None] | None = None
        # decisions not sent yet (with when they were made): one that gives back servers
        # still leaving the set, and those after it
        self._held: deque[tuple[float, dict[str, Any]]] = deque()

    @property
    def leading(self) -> bool:
        """This process's scaler decides (always, when it routes alone)."""
        return self.shared is None or self.shared.leading

    def webhook_stats(self) -> dict[str, int] | None:
        """Webhook deliveries by result (None: no sender); with several router processes,
        counted across leaders (:meth:`SharedScaling.webhook_totals`)."""
        if self.sender is None:
            return None
        return self.shared.webhook_totals() if self.shared is not None else dict(self.sender.stats)

    def wall(self, at: float) -> float:
        """A clock time as Unix time."""
        return time.time() - (self.clock.now() - at)

    def tick(self) -> TickResult | None:
        """One scaling tick (None: another router process leads)."""
        snap = self.tracker.snapshot()
        self._flush(snap.now)
        if self.shared is not None and not self.shared.prepare(self.scaler, snap):
            return None
        if self.shared is not None and self.shared.inherited:  # the last leader's, not delivered
            if self.acting and self.sender is not None:
                self._held.extend((snap.now, body) for body in self.shared.inherited)
                log.info(
                    "autoscaling: sending %d decision(s) of the last leader again", len(self.shared.inherited)
                )
            self.shared.inherited = []
        result = self.scaler.tick(snap, self.fleet.leaving())
        if self.shared is not None:
            self.shared.published(self.scaler, snap.now)
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
                self._held.append((snap.now, body))
        self._flush(snap.now)
        return result

    def unsent(self) -> list[dict[str, Any]]:
        """Decisions not delivered to every webhook yet, oldest first (what a next leader
        sends again: :mod:`slorouter.actuation.leadscale`)."""
        queued = self.sender.undelivered() if self.sender is not None else []
        return queued + [body for _, body in self._held]

    def _flush(self, now: float) -> None:
        """Send the held decisions, in order, up to the first whose released servers are
        still leaving the set (another router process has not adopted the removal yet)."""
        if self.sender is None:
            return
        leaving = self.fleet.leaving()
        while self._held:
            at, body = self._held[0]
            waiting = [b for b in body["remove"] if b in leaving]
            if waiting and now - at < HOLD_MAX_S:
                return
            if waiting:
                log.warning(
                    "decision %s sent with %s still leaving the set after %.0f s",
                    body["decision_id"],
                    ", ".join(waiting),
                    now - at,
                )
            self._held.popleft()
            self.sender.submit(body)

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
        if not self.leading:
            return self._describe_follower()
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
                "finished": st.finished,
            }
        out: dict[str, Any] = {
            "mode": self.cfg.mode.value,
            "interval_s": self.cfg.interval_s,
            "tiers": tiers,
            "decisions": list(self.recent),
        }
        if self.sender is not None:
            out["webhook"] = {**self.sender.stats, "waiting": self.sender.waiting()}
        if self.shared is not None:
            out["leader"] = True
            out["takeovers"] = self.shared.takeovers
            out["finished_by_process"] = self.shared.finished_by_process()
        return out

    def _describe_follower(self) -> dict[str, Any]:
        """Another process leads: what it last published (its scaler's state)."""
        assert self.shared is not None
        st = self.shared.lead_state or {}
        tiers = {}
        for name, d in (st.get("tiers") or {}).items():
            tiers[name] = {
                k: d.get(k) for k in ("current", "desired", "need", "keep", "sizing_rate", "cost_s", "queued")
            } | {"rate_rps": d.get("level"), "deferrals": d.get("deferrals")}
        return {
            "mode": self.cfg.mode.value,
            "interval_s": self.cfg.interval_s,
            "leader": False,
            "leader_holder": self.shared.lead_holder,
            "leader_state_at": st.get("at"),
            "tiers": tiers,
            "decisions": list(self.recent),
        }
