"""Autoscaling for one logical router made of several processes (workers, replicas).

Every process keeps its own :class:`~slorouter.autoscale.feed.LocalFeed` (finished
requests and on-time deferrals per tier, as cumulative counters) and publishes it with
its row (``Row.scale["feed"]``). Only the **leader** (:class:`~slorouter.proxy.syncloop.SyncLoop`'s
lease: the lowest live worker, or the Redis lease) ticks the scaler: at each tick it adds
every process's increments since its last tick (:class:`~slorouter.autoscale.feed.FeedMerge`)
and reads the snapshot (already the shared view: every process's residents and queues).
After each tick it publishes its scaler's state (``Row.scale["lead"]``,
:func:`~slorouter.autoscale.handover.export_state`); every other process keeps the newest
it saw, and resumes from it when it becomes the leader (cooldowns, desired counts, the
rates: no flapping across a hand-over).

The exported counters carry on across a hand-over too: the decision and deferral counts
are part of the scaler's state; the webhook delivery counts (each process's own sender)
are published as the leader's running totals (``hooks``), and a new leader continues
from the totals it resumed from, adding its own deliveries since the take-over. Not
counted: what the old leader delivered after its last published tick (the totals can
step back by that much at a hand-over) and what a process delivered while it did not
lead (a former leader still emptying its queue).

Decisions the leader made but has not delivered to every webhook yet (held until their
released servers are out of the set, queued, in flight) travel with its state at every
exchange (``unsent``, the newest ``UNSENT_MAX``); a new leader sends them again, under
their own ids — a receiver drops an id it has seen — so a decision made just before the
leader died (a release above all: the others complete the removal, only the decision
tells the receiver to stop the server) is not lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from slorouter.autoscale.feed import FeedMerge, LocalFeed, absorb
from slorouter.autoscale.handover import export_state, rebase, resume
from slorouter.autoscale.scaler import Scaler
from slorouter.clock import Clock
from slorouter.state.rows import Row
from slorouter.state.snapshot import Snapshot

log = logging.getLogger("slorouter.autoscale")

UNSENT_MAX = 16  # undelivered decisions published with the leader's state (the newest)


class SharedScaling:
    def __init__(
        self, holder: str, feed: LocalFeed, clock: Clock, wall: Callable[[], float] = time.time
    ) -> None:
        self.holder = holder
        self.feed = feed
        self.clock = clock
        self.wall = wall
        self.merge = FeedMerge()
        self.leader = False  # this process leads (the sync loop's last word)
        self.leading = False  # this process's scaler is running (took over)
        self.lead_state: dict[str, Any] | None = None  # newest scaler state seen (own included)
        self.lead_holder: str | None = None
        self.mine: dict[str, Any] | None = None  # what this process published as the leader
        self._docs: dict[str, Any] = {}  # holder -> its feed document, from the last exchange
        self.takeovers = 0
        # webhook deliveries: this process's sender's counts (set when it has one); the
        # totals resumed at the take-over, and this process's counts at that moment
        self.hook_stats: Callable[[], Mapping[str, int]] = dict
        self._hooks_base: dict[str, int] = {}
        self._hooks_mark: dict[str, int] = {}
        # decisions not delivered everywhere yet (set by the runner); those of the last
        # leader, to send again after a take-over
        self.unsent: Callable[[], list[dict[str, Any]]] = list
        self.inherited: list[dict[str, Any]] = []

    # -- the sync loop's riders -------------------------------------------------------

    def extras(self) -> Mapping[str, Any]:
        wall = self.wall()
        doc: dict[str, Any] = {"feed": self.feed.document(self.clock.now(), wall)}
        if self.leading and self.mine is not None:
            lead = {**self.mine, "ex": wall}  # ex: this exchange (the unsent list is its)
            unsent = self.unsent()[-UNSENT_MAX:]
            if unsent:
                lead["unsent"] = unsent
            doc["lead"] = lead
        return {"scale": doc}

    def observe(self, rows: Mapping[str, Row], leader: bool) -> None:
        self.leader = leader
        docs: dict[str, Any] = {}
        for holder, r in rows.items():
            sc = r.scale
            if not isinstance(sc, dict):
                continue
            if "feed" in sc:
                docs[holder] = sc["feed"]
            lead = sc.get("lead")
            if holder != self.holder and isinstance(lead, dict) and _newer(lead, self.lead_state):
                self.lead_state, self.lead_holder = lead, holder
        self._docs = docs

    # -- the leader's tick --------------------------------------------------------------

    def prepare(self, scaler: Scaler, snap: Snapshot) -> bool:
        """Before a tick: False when this process does not lead (no tick); else the
        fleet's increments are in the scaler (after a take-over, from the state resumed)."""
        if not self.leader:
            if self.leading:
                log.info("autoscaling: no longer the leader; the scaler stops here")
            self.leading = False
            return False
        now, wall = snap.now, self.wall()
        if not self.leading:
            self.takeover(scaler, snap, now, wall)
        docs = dict(self._docs)
        docs[self.holder] = self.feed.document(self.clock.now(), wall)  # own: the live counts
        absorb(scaler, self.merge.collect(docs, wall), now, wall)
        return True

    def takeover(self, scaler: Scaler, snap: Snapshot, now: float, wall: float) -> None:
        self.leading = True
        self.takeovers += 1
        self.merge.reset()
        docs = dict(self._docs)
        docs[self.holder] = self.feed.document(self.clock.now(), wall)
        self.merge.collect(docs, wall)  # the baseline: counts from here on
        other = self.lead_state if _newer(self.lead_state, self.mine) else None
        prior = other if other is not None else self.mine
        hooks = prior.get("hooks") if prior is not None else None
        self._hooks_base = _counts(hooks)
        self._hooks_mark = dict(self.hook_stats()) if isinstance(hooks, dict) else {}
        unsent = other.get("unsent") if other is not None else None
        self.inherited = [d for d in unsent if _decision(d)] if isinstance(unsent, list) else []
        if other is not None and resume(scaler, other, now, wall):
            rebase(scaler, snap, fresh=False)
            log.info(
                "autoscaling: leader now; resumed the scaler of %s (state %.1f s old)",
                self.lead_holder,
                wall - float(other.get("at", wall)),
            )
        elif self.mine is not None:
            rebase(scaler, snap, fresh=False)
            log.info("autoscaling: leader again; continuing this process's scaler")
        else:
            rebase(scaler, snap, fresh=True)
            log.info("autoscaling: leader now; no earlier scaler state seen, starting afresh")

    def finished_by_process(self) -> dict[str, dict[str, int]]:
        """Per process (holder) and tier: requests finished there (its published counters;
        this process's live ones) — what the leader sums."""
        docs = dict(self._docs)
        docs[self.holder] = self.feed.document(self.clock.now(), self.wall())
        out: dict[str, dict[str, int]] = {}
        for holder, doc in docs.items():
            tiers = doc.get("t") if isinstance(doc, dict) else None
            if isinstance(tiers, dict):
                out[holder] = {t: int(v[0]) for t, v in tiers.items() if isinstance(v, list) and v}
        return out

    def published(self, scaler: Scaler, now: float) -> None:
        """After a tick: the state the others resume from."""
        self.mine = export_state(scaler, now, self.wall())
        self.mine["hooks"] = self.webhook_totals()

    def webhook_totals(self) -> dict[str, int]:
        """Webhook deliveries by result, counted across leaders: the totals resumed at
        the take-over plus this process's deliveries since."""
        own = self.hook_stats()
        keys = set(own) | set(self._hooks_base)
        return {
            k: self._hooks_base.get(k, 0) + max(0, own.get(k, 0) - self._hooks_mark.get(k, 0))
            for k in sorted(keys)
        }


def _decision(d: Any) -> bool:
    """A decision body as :meth:`ScaleDecision.body` makes it (enough to send it again)."""
    return isinstance(d, dict) and isinstance(d.get("decision_id"), str) and isinstance(d.get("remove"), list)


def _counts(d: Any) -> dict[str, int]:
    if not isinstance(d, dict):
        return {}
    return {str(k): int(v) for k, v in d.items() if isinstance(v, int) and v >= 0}


def _newer(a: Any, b: Any) -> bool:
    if not isinstance(a, dict):
        return False
    if not isinstance(b, dict):
        return True
    at, bt = a.get("at"), b.get("at")
    if not isinstance(at, int | float):
        return False
    if not isinstance(bt, int | float) or at != bt:
        return not isinstance(bt, int | float) or at > bt
    return float(a.get("ex") or 0.0) > float(b.get("ex") or 0.0)  # the same tick, a later exchange
