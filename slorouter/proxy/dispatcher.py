"""The admission dispatcher: asks the policy, and parks deferred requests.

``admit(info)`` returns a :class:`Dispatch` or a :class:`Reject`. A dispatched request
is attached to its first-ranked backend in the tracker *at decision time*, so the next
decision (even within the same wake-up) sees it. When the policy says :class:`Defer`,
the request waits in the :class:`~slorouter.admission.queue.AdmissionQueue` (the same
queue code the offline fleet simulator drives) and is decided again when something may
have changed: a request finished (tracker listener), a backend became healthy or the
fleet was swapped (:meth:`wake`), or the earliest ``Defer.retry_at`` passed. A request
waits at most ``max_wait_s`` (then 503); a full queue answers 429.
"""

from __future__ import annotations

import asyncio

from slorouter.admission.queue import AdmissionQueue, priority
from slorouter.clock import Clock
from slorouter.policy.base import Policy
from slorouter.state.tracker import Tracker
from slorouter.values import Decision, Defer, Dispatch, Outcome, Reject, RequestInfo


class Dispatcher:
    def __init__(
        self,
        policy: Policy,
        tracker: Tracker,
        clock: Clock,
        *,
        max_queue: int = 10_000,
        max_wait_s: float = 600.0,
        max_tries: int = 16,
    ) -> None:
        self.policy = policy
        self.tracker = tracker
        self.clock = clock
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.queue = AdmissionQueue(max_tries)
        self._futs: dict[int, asyncio.Future[Dispatch | Reject]] = {}
        self._wake_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.deferrals = 0
        tracker.add_listener(self._on_outcome)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.wake()

    def _decide(self, req: RequestInfo) -> Decision:
        d = self.policy.select(req, self.tracker.snapshot())
        if isinstance(d, Dispatch) and d.backends:
            self.tracker.on_dispatch(req.rid, d.backends[0])
        return d

    async def admit(self, req: RequestInfo) -> Dispatch | Reject:
        d = self._decide(req)
        if not isinstance(d, Defer):
            return d
        if len(self.queue) >= self.max_queue:
            return Reject(429, "the router queue is full", retry_after_s=1.0)
        self.deferrals += 1
        fut: asyncio.Future[Dispatch | Reject] = asyncio.get_running_loop().create_future()
        self._futs[req.rid] = fut
        self.queue.push(req, priority(req, self.tracker.snapshot()))
        nxt = self.queue.next_retry()
        self._arm_timer(d.retry_at if nxt is None else nxt if d.retry_at is None else min(nxt, d.retry_at))
        try:
            async with asyncio.timeout(self.max_wait_s):
                return await fut
        except TimeoutError:
            return Reject(503, f"no capacity within {self.max_wait_s:g} s ({d.reason})", retry_after_s=1.0)
        finally:
            self.queue.remove(req.rid)
            self._futs.pop(req.rid, None)

    def wake(self) -> None:
        """Decide waiting requests again soon (coalesced: once per loop iteration)."""
        if len(self.queue) and not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._run_wake)

    def _on_outcome(self, outcome: Outcome) -> None:
        if len(self.queue):
            self.wake()

    def _run_wake(self) -> None:
        self._wake_scheduled = False
        if not len(self.queue):
            return
        for req, d in self.queue.drain(self._decide, self.clock.now()):
            fut = self._futs.get(req.rid)
            if fut is not None and not fut.done():
                assert not isinstance(d, Defer)
                fut.set_result(d)
        self._arm_timer(self.queue.next_retry())

    def _arm_timer(self, at: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is None or not len(self.queue):
            return
        delay = max(0.0, at - self.clock.now())
        self._timer = asyncio.get_running_loop().call_later(delay, self.wake)
