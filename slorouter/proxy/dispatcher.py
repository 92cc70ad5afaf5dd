"""The admission dispatcher: asks the policy, and parks deferred requests.

``admit(info)`` returns a :class:`Dispatch` or a :class:`Reject`. When the policy says
:class:`Defer`, the request waits in the router queue and is decided again when
something may have changed: a request finished (tracker listener), a backend became
healthy or the fleet was swapped (:meth:`wake`), or the policy's ``retry_at`` hint
passed. Waiting requests are re-decided in priority order (``priority`` key,
smallest first — by default the TTFT deadline, i.e. least slack first). A request
waits at most ``max_wait_s``; a full queue rejects with 429.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from slorouter.clock import Clock
from slorouter.policy.base import Policy
from slorouter.state.snapshot import Snapshot
from slorouter.state.tracker import Tracker
from slorouter.values import Defer, Dispatch, Outcome, Reject, RequestInfo

Priority = Callable[[RequestInfo, float, Snapshot], float]


def deadline_first(req: RequestInfo, now: float, snapshot: Snapshot) -> float:
    d = req.ttft_deadline
    if math.isinf(d) and req.deadline_at is not None:
        d = req.deadline_at
    return d if not math.isinf(d) else req.arrival + 1e6


@dataclass(eq=False, slots=True)
class _Waiter:
    req: RequestInfo
    fut: asyncio.Future[Dispatch | Reject]
    retry_at: float | None = None
    reason: str = ""
    seq: int = field(default=0)


class Dispatcher:
    def __init__(
        self,
        policy: Policy,
        tracker: Tracker,
        clock: Clock,
        *,
        max_queue: int = 10_000,
        max_wait_s: float = 600.0,
        priority: Priority = deadline_first,
    ) -> None:
        self.policy = policy
        self.tracker = tracker
        self.clock = clock
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.priority = priority
        self._waiting: dict[int, _Waiter] = {}
        self._wake_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.deferrals = 0
        tracker.add_listener(self._on_outcome)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.wake()

    def _decide(self, req: RequestInfo) -> Dispatch | Reject | Defer:
        return self.policy.select(req, self.tracker.snapshot())

    async def admit(self, req: RequestInfo) -> Dispatch | Reject:
        d = self._decide(req)
        if not isinstance(d, Defer):
            return d
        if len(self._waiting) >= self.max_queue:
            return Reject(429, "the router queue is full", retry_after_s=1.0)
        self.deferrals += 1
        loop = asyncio.get_running_loop()
        w = _Waiter(req, loop.create_future(), d.retry_at, d.reason)
        self._waiting[req.rid] = w
        self._arm_timer()
        try:
            async with asyncio.timeout(self.max_wait_s):
                return await w.fut
        except TimeoutError:
            return Reject(503, f"no capacity within {self.max_wait_s:g} s ({w.reason})", retry_after_s=1.0)
        finally:
            self._waiting.pop(req.rid, None)

    def wake(self) -> None:
        """Re-decide waiting requests soon (coalesced: once per loop iteration)."""
        if self._waiting and not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._run_wake)

    def _on_outcome(self, outcome: Outcome) -> None:
        if self._waiting:
            self.wake()

    def _run_wake(self) -> None:
        self._wake_scheduled = False
        if not self._waiting:
            return
        snap = self.tracker.snapshot()
        now = snap.now
        order = sorted(self._waiting.values(), key=lambda w: self.priority(w.req, now, snap))
        for w in order:
            if w.fut.done():
                continue
            d = self._decide(w.req)
            if isinstance(d, Defer):
                w.retry_at = d.retry_at
                w.reason = d.reason
                continue
            w.fut.set_result(d)
            # the dispatch happens when the waiter's task resumes; the tracker will
            # see it then. Decisions for the next waiters would not see this one, so
            # stop after a dispatch and continue on the next loop iteration.
            if isinstance(d, Dispatch):
                self.wake()
                break
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        hints = [w.retry_at for w in self._waiting.values() if w.retry_at is not None and not w.fut.done()]
        if not hints:
            return
        delay = max(0.0, min(hints) - self.clock.now())
        self._timer = asyncio.get_running_loop().call_later(delay, self.wake)
