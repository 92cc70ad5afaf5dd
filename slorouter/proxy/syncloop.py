"""The live side of the shared load picture: a background task per router process.

Every ``tick_s`` (longer when a tick would cost more than ``budget`` of a core: see
:class:`SyncLoop`) it publishes this process's :class:`~slorouter.state.sync.Row` to the
store, reads every live row, and has :class:`~slorouter.state.sync.LoadSync` absorb the
others' (the dispatcher is woken when some backend's load went down, so queued requests
see the room other processes freed). It also holds or renews the **leader lease**: one
process decides what only one should (the model state file today).

The store failing never fails a request: the loop keeps the last rows it read while
they are younger than ``ttl_s``, then routes on its own view alone, logs the outage once
(and its end) and exports it (``store_up``). What a store must offer is
:class:`LiveStore`; implementations: :mod:`slorouter.proxy.shmstore` (workers of one
host) and :mod:`slorouter.proxy.redisstore` (replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from slorouter.state.sync import LoadSync, Row

log = logging.getLogger("slorouter.sync")


class StoreError(Exception):
    """The store could not be reached or answered garbage."""


class LiveStore(Protocol):
    async def exchange(self, row: Row) -> Mapping[str, Row]:
        """Publish ``row`` (replacing this holder's) and return every live row, this
        holder's included; raise :class:`StoreError` when the store is unreachable."""
        ...

    async def lease(self, holder: str, ttl_s: float) -> bool:
        """Take or renew the leader lease for ``ttl_s``; True while this holder has it."""
        ...

    async def close(self) -> None: ...


class SyncLoop:
    def __init__(
        self,
        sync: LoadSync,
        store: LiveStore,
        *,
        tick_s: float,
        ttl_s: float,
        on_freed: Callable[[], None] | None = None,
        wall: Callable[[], float] = time.time,
        budget: float = 0.05,
    ) -> None:
        """``budget``: the share of one core the exchange may use; when a tick costs
        more than ``budget × tick_s`` (a large fleet), the next one waits longer — the
        view gets staler, routing never gets slower (``interval_s`` says by how much)."""
        self.sync = sync
        self.store = store
        self.tick_s = tick_s
        self.ttl_s = ttl_s
        self.on_freed = on_freed
        self.wall = wall
        self.up = True
        self.leader = False
        self.ticks = 0
        self.failures = 0
        self.budget = budget
        self.interval_s = tick_s  # the interval actually kept (see budget)
        self.cost_s = 0.0  # CPU of the last tick's own work
        self._rows: Mapping[str, Row] = {}
        self._rows_at = -float("inf")
        self._task: asyncio.Task[None] | None = None

    @property
    def age_s(self) -> float:
        """Age of the oldest other holder's row in the current view (0: none)."""
        return self.sync.age_s

    @property
    def peers(self) -> int:
        return self.sync.peers

    async def tick(self) -> None:
        """One exchange: publish, read, absorb, lease."""
        tracker = self.sync.tracker
        now = tracker.clock.now()
        cpu = time.thread_time()
        row = self.sync.row(now)
        self.cost_s = time.thread_time() - cpu
        wall = self.wall()
        try:
            rows = await self.store.exchange(row)
            self._rows, self._rows_at = rows, wall
            self.leader = await self.store.lease(self.sync.holder, self.ttl_s)
            if not self.up:
                log.warning("shared state store reachable again: routing on the shared view")
            self.up = True
        except StoreError as e:
            self.failures += 1
            if self.up:
                log.warning("shared state store unreachable (%s): routing on this replica's own view", e)
            self.up = False
            self.leader = False
            if wall - self._rows_at > self.ttl_s:
                self._rows = {}
        cpu = time.thread_time()
        before = {b: ld.running for b, ld in tracker.loads.items()}
        self.sync.absorb(self._rows, tracker.clock.now())
        self.cost_s += time.thread_time() - cpu
        self.ticks += 1
        if self.on_freed is not None and any(
            ld.running < before.get(b, 0) for b, ld in tracker.loads.items()
        ):
            self.on_freed()

    async def run(self) -> None:
        while True:
            started = self.wall()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die: the router must keep routing
                log.exception("shared state sync failed; retrying next tick")
            # the CPU of building, absorbing (not of the store's I/O, which overlaps routing)
            self.interval_s = max(self.tick_s, self.cost_s / self.budget)
            await asyncio.sleep(max(0.0, self.interval_s - (self.wall() - started)))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.store.close()
