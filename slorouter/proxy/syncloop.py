"""The live side of the shared load picture: a background task per router process.

Every ``tick_s`` (longer when a tick would cost more than ``budget`` of a core: see
:class:`SyncLoop`) — and, with ``event_s``, as soon as ``event_s`` after the last exchange
when this process placed or finished a request since (event-driven publishing, as Dynamo's
router replicas publish request lifecycle events in batches rather than on a timer) — it
publishes this process's :class:`~slorouter.state.sync.Row` to the store, reads every
live row, and has :class:`~slorouter.state.sync.LoadSync` absorb the others' (the
dispatcher is woken when some backend's load went down, so queued requests see the room
other processes freed). It also holds or renews the **leader lease**: one
process decides what only one should (the model state file today).

The store failing never fails a request: the loop keeps the last rows it read while
they are younger than ``ttl_s``, then routes on its own view alone, logs the outage once
(and its end) and exports it (``store_up``). A tick's store I/O has a hard deadline
(``timeout_s``, default half the TTL): a hung store costs one timed-out tick, never a
stalled loop. A leader that loses the store stays leader until its lease would have
expired, and not a moment longer (nobody else can take the lease before that), so there
is never more than one. What a store must offer is :class:`LiveStore`; implementations:
:mod:`slorouter.proxy.shmstore` (workers of one host) and
:mod:`slorouter.proxy.redisstore` (replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

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
        timeout_s: float | None = None,
        event_s: float = 0.0,
    ) -> None:
        """``event_s``: when this process's own row changed (a placement or a departure
        of its own), the next exchange comes that long after the last one instead of at
        the tick (0: at the tick only). ``budget``: the share of one core the exchange may
        use; when a tick costs more than ``budget × tick_s`` (a large fleet), the next one
        waits longer — the view gets staler, routing never gets slower (``interval_s`` says
        by how much; the event-driven gap grows the same way).
        ``timeout_s``: the deadline of one tick's store I/O (default half the TTL)."""
        self.sync = sync
        self.store = store
        self.tick_s = tick_s
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s if timeout_s is not None else ttl_s / 2
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
        self._lease_until = -float("inf")  # monotonic: the lease is ours until then at least
        self._errors = 0  # unexpected errors in a row (logged in full once)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.event_s = event_s
        self._due = asyncio.Event()  # own row changed since the last row was built
        if event_s > 0:
            sync.on_due = self._due.set
        # riders: documents other parts publish with the row (Row field -> value; the
        # autoscaler's inputs, the run-time backend list), and what they do with every
        # exchange's rows (rows, this process leads) — see slorouter.actuation.fleetsync
        self.extras: list[Callable[[], Mapping[str, Any]]] = []
        self.observers: list[Callable[[Mapping[str, Row], bool], None]] = []

    @property
    def rows(self) -> Mapping[str, Row]:
        """The live rows of the last exchange (this process's own included)."""
        return self._rows

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
        self._due.clear()  # row() resets the count of unpublished changes
        row = self.sync.row(now)
        for extra in self.extras:
            row = dataclasses.replace(row, **extra())
        self.cost_s = time.thread_time() - cpu
        wall = self.wall()
        try:
            async with asyncio.timeout(self.timeout_s):
                rows = await self.store.exchange(row)
                self._rows, self._rows_at = rows, wall
                asked = time.monotonic()  # the lease runs from before the request at the latest
                self.leader = await self.store.lease(self.sync.holder, self.ttl_s)
                self._lease_until = asked + self.ttl_s if self.leader else -float("inf")
            if not self.up:
                log.warning("shared state store reachable again: routing on the shared view")
            self.up = True
        except (StoreError, TimeoutError) as e:
            self.failures += 1
            if self.up:
                why = e if isinstance(e, StoreError) else f"no answer within {self.timeout_s:g} s"
                log.warning(
                    "shared state store unreachable (%s): routing on this replica's own view "
                    "(others' rows kept for %g s)",
                    why,
                    self.ttl_s,
                )
            self.up = False
            self.leader = time.monotonic() < self._lease_until
            if self.wall() - self._rows_at > self.ttl_s:
                self._rows = {}
        cpu = time.thread_time()
        before = {b: ld.running for b, ld in tracker.loads.items()}
        self.sync.absorb(self._rows, tracker.clock.now())
        for observe in self.observers:
            observe(self._rows, self.leader)
        self.cost_s += time.thread_time() - cpu
        self.ticks += 1
        if self.on_freed is not None and any(
            ld.running < before.get(b, 0) for b, ld in tracker.loads.items()
        ):
            self.on_freed()

    async def run(self) -> None:
        while not self._stopping.is_set():
            started = self.wall()
            try:
                await self.tick()
                self._errors = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die: the router must keep routing
                self.failures += 1
                self._errors += 1
                if self._errors == 1:
                    log.exception("shared state sync failed; retrying every tick")
            # the CPU of building, absorbing (not of the store's I/O, which overlaps routing)
            floor = self.cost_s / self.budget
            self.interval_s = max(self.tick_s, floor)
            if self.event_s > 0:  # early when the own row changes, never more often than this
                gap = max(self.event_s, floor)
                await self._wait(self._stopping, gap - (self.wall() - started))
                await self._wait(self._due, self.interval_s - (self.wall() - started))
            else:
                await self._wait(self._stopping, self.interval_s - (self.wall() - started))

    async def _wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Until ``event`` is set, the loop is stopping, or ``timeout_s`` has passed."""
        if timeout_s <= 0 or self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """End the loop, then withdraw this process's row from the store.

        The loop is asked to stop and given the time of one tick to do so, rather than
        cancelled in the middle of store I/O: on Python 3.11 ``asyncio.wait_for`` (which
        the redis client uses) can swallow a cancellation that arrives as its I/O
        completes, and a cancelled-but-running loop would hang the shutdown."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            self._due.set()  # wake a loop waiting for its own row to change
            await asyncio.wait({task}, timeout=self.timeout_s + self.tick_s)
            while not task.done():  # stuck: cancel, as often as it takes
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            if not task.cancelled() and (e := task.exception()) is not None:
                log.warning("the sync loop ended with %r", e)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.store.close()
        except TimeoutError:
            log.info("the store did not answer at stop; this process's row expires with its TTL")
