"""Changing the fleet at run time: register a backend, remove one (drain first), move
empty servers between tier bins. Every change rebuilds the backend set from the
:class:`~slorouter.state.membership.Membership` and swaps it in through :meth:`swap` —
the one path a config reload also takes — so no decision ever sees a set change under
it: health first (a new backend is routable before any policy can see it), then the
tracker, then the dispatcher's queue is woken (queued requests may fit the new server).

Removal: the backend is drained (no new requests); when its last in-flight request
finished (a tracker listener notices) it leaves the set and is reported removable
(``GET /admin/backends``: ``removed``; :meth:`wait_removed` for a caller that waits).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from slorouter.clock import Clock
from slorouter.proxy.dispatcher import Dispatcher
from slorouter.proxy.health import HealthMonitor
from slorouter.state.backends import Backend, BackendSet
from slorouter.state.membership import Membership, Removed
from slorouter.state.tracker import Tracker
from slorouter.values import Outcome, Tier

log = logging.getLogger("slorouter.fleet")


class FleetManager:
    def __init__(
        self,
        membership: Membership,
        monitor: HealthMonitor,
        tracker: Tracker,
        dispatcher: Dispatcher,
        clock: Clock,
    ) -> None:
        self.membership = membership
        self.monitor = monitor
        self.tracker = tracker
        self.dispatcher = dispatcher
        self.clock = clock
        self._waiters: dict[str, list[asyncio.Future[Removed]]] = {}
        self._check_scheduled = False
        self.key_envs: dict[str, str] = {}  # registered id -> the environment variable of its API key
        # several router processes (slorouter.actuation.fleetshare): told of every change
        # made here; asked before a drained backend leaves the set (the others drained too)
        self.on_change: Callable[[Iterable[str]], None] | None = None
        self.can_finish: Callable[[str], bool] | None = None
        tracker.add_listener(self._on_outcome)

    # -- the one swap path ----------------------------------------------------------------

    def swap(self) -> BackendSet:
        new_set = self.membership.build()
        self.monitor.set_backends(new_set.backends)  # health first: new ids are routable before they appear
        for bid in self.membership.removing:
            self.monitor.drain(bid, True)
        self.tracker.set_backends(new_set)
        self.dispatcher.wake()
        return new_set

    def set_config(self, configured: Iterable[Backend], tiers: Sequence[Tier]) -> list[str]:
        """A reloaded config's backends (the caller swaps the rest of the config)."""
        warnings = self.membership.set_config(configured, tiers)
        self.swap()
        return warnings

    # -- operations -----------------------------------------------------------------------

    def register(self, b: Backend, key_env: str | None = None) -> str:
        """``"created"`` or ``"unchanged"``; :class:`ValueError` when refused. ``key_env``:
        the environment variable its API key came from (other router processes read their own)."""
        got = self.membership.register(b)
        if got == "created":
            if key_env is not None:
                self.key_envs[b.id] = key_env
            else:
                self.key_envs.pop(b.id, None)
            self.swap()
            log.info("backend %s registered (%s, tier %s)", b.id, b.url, b.tier)
            self._changed([b.id])
        return got

    def remove(self, backend_id: str, by: str) -> str | None:
        """Start removing a backend: ``"removed"`` (it held nothing), ``"draining"`` (its
        in-flight requests finish first), None when there is no such backend."""
        if not self.membership.begin_remove(backend_id, by):
            return None
        self.monitor.drain(backend_id, True)
        self._changed([backend_id])
        if self._finish_if_empty(backend_id):
            return "removed"
        log.info("backend %s draining for removal (%s)", backend_id, by)
        return "draining"

    def move(self, assignment: Mapping[str, str]) -> None:
        """Put servers in other tier bins (the scaler moves only empty ones)."""
        self.membership.move(assignment)
        self.swap()
        for bid, tier in assignment.items():
            log.info("backend %s moved to tier %s", bid, tier)
        self._changed(assignment)

    def adopt(self, entries: Mapping[str, tuple[str, Backend | None, str | None, str]]) -> None:
        """Other router processes' changes (id -> state, backend, moved tier, by), applied
        to the membership and swapped in at once (:mod:`slorouter.actuation.fleetshare`)."""
        now = self.clock.now()
        gone: list[Removed] = []
        for bid, (state, backend, tier, by) in entries.items():
            was_removing = bid in self.membership.removing
            r = self.membership.adopt(bid, state, backend, tier, by, now)
            if r is not None:
                gone.append(r)
            elif was_removing and bid not in self.membership.removing:
                self.monitor.drain(bid, False)
        self.swap()
        for r in gone:
            log.info("backend %s removed (%s, by another router process): removable", r.backend.id, r.by)
            self._resolve(r)

    def check_drained(self) -> None:
        """Take out every removed backend that is drained (here and, shared, everywhere)."""
        for bid in list(self.membership.removing):
            self._finish_if_empty(bid)

    def _changed(self, ids: Iterable[str]) -> None:
        if self.on_change is not None:
            self.on_change(list(ids))

    def leaving(self) -> frozenset[str]:
        return frozenset(self.membership.removing)

    async def wait_removed(self, backend_id: str, timeout_s: float) -> Removed | None:
        """The removal record once ``backend_id`` left the set (None: not within the timeout)."""
        done = next((r for r in reversed(self.membership.removed) if r.backend.id == backend_id), None)
        if done is not None and backend_id not in self.membership.removing:
            return done
        fut: asyncio.Future[Removed] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(backend_id, []).append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(backend_id, [])
            if fut in waiting:
                waiting.remove(fut)

    def describe_removed(self) -> list[dict[str, Any]]:
        return [
            {"id": r.backend.id, "url": r.backend.url, "tier": r.backend.tier, "by": r.by, "removable": True}
            for r in self.membership.removed
        ]

    # -- internals ------------------------------------------------------------------------

    def _finish_if_empty(self, backend_id: str) -> bool:
        load = self.tracker.loads.get(backend_id)
        if load is not None and load.running:
            return False
        if self.can_finish is not None and not self.can_finish(backend_id):
            return False
        r = self.membership.finish_remove(backend_id, self.clock.now())
        if r is None:
            return False
        self.swap()
        log.info("backend %s removed (%s): removable", backend_id, r.by)
        self._resolve(r)
        self._changed([backend_id])
        return True

    def _resolve(self, r: Removed) -> None:
        for fut in self._waiters.pop(r.backend.id, []):
            if not fut.done():
                fut.set_result(r)

    def _on_outcome(self, o: Outcome) -> None:
        if o.backend is not None and o.backend in self.membership.removing and not self._check_scheduled:
            self._check_scheduled = True  # outside the tracker's hook: swap on the next loop turn
            asyncio.get_running_loop().call_soon(self._check_drained)

    def _check_drained(self) -> None:
        self._check_scheduled = False
        self.check_drained()
