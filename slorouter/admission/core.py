"""The admission core: one synchronous decision path for the live proxy and the simulator.

Both drivers — :class:`slorouter.proxy.dispatcher.Dispatcher` (asyncio futures and
timers) and :class:`slorouter.fleetsim.fleet.FleetSim` (an event heap on a manual clock) —
make every admission decision through this class, so what the simulator measures is
what the router does. It owns the :class:`~slorouter.admission.queue.AdmissionQueue`
and calls the policy; it does no I/O and keeps no clock of its own (the tracker's).

Driving it::

    decided = core.arrive(req)     # after tracker.on_arrival(req)
    decided = core.wake()          # when something may have changed (a request finished,
                                   # the fleet or its health changed, the timer fired)
    at = core.next_timer()         # wake at this clock time at the latest (None: no need)
    core.withdraw(rid)             # a queued request's client left, or it waited too long

``decided`` lists ``(request, Dispatch | Reject)`` in decision order; a request not in
it (after ``arrive``) waits in the queue. The core applies every decision to shared
state itself, at decision time, so the next decision sees it:

* **Dispatch**: ``tracker.on_dispatch`` to the first-ranked backend and the policy's
  ``on_dispatch`` (a driver reports a failover to another backend itself);
* **Reject**: ``tracker.on_finish(rid, REJECTED)`` (the request ends here; a driver's
  later ``on_finish`` of it is a no-op).

The policy's ``on_finish`` hook is a tracker listener registered here, for both drivers.

Ordering
--------
A new arrival is decided at once unless requests that can still meet their SLO are
waiting: then it joins the queue (by its :func:`~slorouter.admission.queue.priority`
key) and the queue is drained in key order, so it never overtakes a more urgent waiter.
A best-effort or already-late arrival joins the queue whenever it is not empty. When
only late (best-effort lane) requests wait, an on-time arrival is decided at once: an
arrival frees no room, and it comes before them anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from slorouter.admission.queue import AdmissionQueue, priority
from slorouter.state.snapshot import Snapshot
from slorouter.state.tracker import Tracker
from slorouter.values import Decision, Defer, Dispatch, Outcome, Reject, RequestInfo, Status


class Policy(Protocol):
    """What the core needs of a policy (:class:`slorouter.policy.base.Policy`; restated
    here because admission and policy are sibling layers that do not import each other)."""

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision: ...

    def on_dispatch(self, request: RequestInfo, backend_id: str) -> None: ...

    def on_finish(self, outcome: Outcome) -> None: ...


Decided = list[tuple[RequestInfo, Dispatch | Reject]]
# (clock time, request id, "dispatch" | "defer" | "reject", backend id or reason)
DecisionLog = list[tuple[float, int, str, str]]


class AdmissionCore:
    def __init__(
        self,
        policy: Policy,
        tracker: Tracker,
        *,
        max_queue: int = 10_000,
        max_tries: int = 16,
        log: DecisionLog | None = None,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        """``log``: every policy decision is appended to it (for replay comparisons).
        ``on_finish``: called after a request finished while others wait (a driver
        schedules a :meth:`wake` from it)."""
        self.policy = policy
        self.tracker = tracker
        self.max_queue = max_queue
        self.queue = AdmissionQueue(max_tries)
        self.log = log
        self.decisions = 0
        self._wake_hint = on_finish
        tracker.add_listener(self._on_outcome)

    def __len__(self) -> int:
        return len(self.queue)

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy

    def close(self) -> None:
        """Stop hearing of finished requests (a core replaced by another on the same
        tracker must not call the policy's ``on_finish`` twice)."""
        self.tracker.remove_listener(self._on_outcome)

    # -- the three entry points ------------------------------------------------------

    def arrive(self, req: RequestInfo) -> Decided:
        """Decide a new arrival (see module docs: at once, or in the queue's order)."""
        q = self.queue
        if len(q):
            now = self.tracker.clock.now()
            key = priority(req, self.tracker.snapshot(req))
            if math.isinf(key) or key < now or q.waiting_on_time(now):
                if len(q) >= self.max_queue:
                    return [(req, self._reject(req, Reject(429, "the router queue is full", 1.0)))]
                q.push(req, key)
                return self.wake()
        d = self._decide(req)
        if not isinstance(d, Defer):
            return [(req, d)]
        if len(q) >= self.max_queue:
            return [(req, self._reject(req, Reject(429, "the router queue is full", 1.0)))]
        q.push(req, priority(req, self.tracker.snapshot(req)), d.retry_at)
        return []

    def wake(self) -> Decided:
        """Decide queued requests again, in order (at most ``max_tries`` decisions)."""
        if not len(self.queue):
            return []
        got = self.queue.drain(self._decide, self.tracker.clock.now())
        return [(r, d) for r, d in got if not isinstance(d, Defer)]

    def next_timer(self) -> float | None:
        """The clock time of the earliest ``Defer.retry_at`` still ahead (None: none)."""
        if not len(self.queue):
            return None
        return self.queue.next_retry(self.tracker.clock.now())

    def withdraw(self, rid: int) -> bool:
        """Take a queued request out (its client left, or it waited too long)."""
        return self.queue.remove(rid) is not None

    # -- internals -------------------------------------------------------------------

    def _decide(self, req: RequestInfo) -> Decision:
        tracker = self.tracker
        d = self.policy.select(req, tracker.snapshot(req))
        self.decisions += 1
        if isinstance(d, Dispatch):
            known = tracker.backends
            ranked = tuple(b for b in d.backends if b in known)
            if not ranked:
                d = Reject(503, "the policy chose no configured backend")
            else:
                if len(ranked) != len(d.backends):
                    d = Dispatch(ranked, d.reason)
                tracker.on_dispatch(req.rid, ranked[0])
                self.policy.on_dispatch(req, ranked[0])
                if self.log is not None:
                    self.log.append((tracker.clock.now(), req.rid, "dispatch", ranked[0]))
                return d
        if isinstance(d, Reject):
            return self._reject(req, d)
        if self.log is not None:
            self.log.append((tracker.clock.now(), req.rid, "defer", d.reason))
        return d

    def _reject(self, req: RequestInfo, d: Reject) -> Reject:
        if self.log is not None:
            self.log.append((self.tracker.clock.now(), req.rid, "reject", d.reason))
        self.tracker.on_finish(req.rid, Status.REJECTED)
        return d

    def _on_outcome(self, out: Outcome) -> None:
        self.policy.on_finish(out)
        if self._wake_hint is not None and len(self.queue):
            self._wake_hint()
