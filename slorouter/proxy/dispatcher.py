"""The live admission driver: the admission core on asyncio futures and timers.

``admit(info)`` returns a :class:`Dispatch` or a :class:`Reject`. Every decision is made
by :class:`~slorouter.admission.core.AdmissionCore` — the same code the offline fleet
simulator drives — which attaches a dispatched request to its first-ranked backend in
the tracker *at decision time*, so the next decision (even within the same wake-up)
sees it. A request the core queued waits on a future and is decided again when
something may have changed: a request finished (the core's finish hook), a backend
became healthy or the fleet was swapped (:meth:`wake`), or the core's next timer
(a ``Defer.retry_at``, a request turning late or reaching its wait limit) passed.
Wake-ups are coalesced to one per loop iteration. How long a request may wait, and
every 429 (late, past its wait limit, shed under overload, a full queue), is the core's
decision, so the simulator makes the same ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from slorouter.admission.core import AdmissionCore, Decided, DecisionLog, Observer
from slorouter.clock import Clock
from slorouter.policy.base import Policy
from slorouter.state.tracker import Tracker
from slorouter.values import Dispatch, Reject, RequestInfo


class Cancellable(Protocol):
    def cancel(self) -> None: ...


# (clock time, callback) -> a handle: schedules the admission timer
CallAt = Callable[[float, Callable[[], None]], Cancellable]


class Dispatcher:
    def __init__(
        self,
        policy: Policy,
        tracker: Tracker,
        clock: Clock,
        *,
        max_queue: int | None = None,
        max_wait_s: float | None = None,
        max_tries: int = 16,
        log: DecisionLog | None = None,
        call_at: CallAt | None = None,
        observe: Observer | None = None,
    ) -> None:
        """``max_queue``/``max_wait_s``: the core's limits (None: from the tiers'
        objectives); ``call_at`` schedules the admission timer at a clock time (default:
        the running loop's ``call_later``); ``log`` records every decision (replays);
        ``observe`` hears every decided request (metrics)."""
        self.tracker = tracker
        self.clock = clock
        self._policy = policy
        self.core = AdmissionCore(
            policy,
            tracker,
            max_queue=max_queue,
            max_wait_s=max_wait_s,
            max_tries=max_tries,
            log=log,
            on_finish=self.wake,
            observe=observe,
        )
        self._futs: dict[int, asyncio.Future[Dispatch | Reject]] = {}
        self._wake_scheduled = False
        self._timer: Cancellable | None = None
        self._timer_at: float | None = None
        self._call_at = call_at or self._loop_call_at

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def waiting(self) -> int:
        return len(self.core)

    def set_policy(self, policy: Policy) -> None:
        self._policy = policy
        self.core.set_policy(policy)
        self.wake()

    def set_limits(self, max_queue: int | None, max_wait_s: float | None) -> None:
        self.core.set_limits(max_queue, max_wait_s)

    async def admit(self, req: RequestInfo) -> Dispatch | Reject:
        mine: Dispatch | Reject | None = None
        for r, d in self.core.arrive(req):
            if r.rid == req.rid:
                mine = d
            else:
                self._resolve(r.rid, d)
        self._arm_timer()
        if mine is not None:
            return mine
        fut: asyncio.Future[Dispatch | Reject] = asyncio.get_running_loop().create_future()
        self._futs[req.rid] = fut
        try:
            return await fut  # every queued request is decided by its wait limit at the latest
        finally:
            self.core.withdraw(req.rid)
            self._futs.pop(req.rid, None)

    def wake(self) -> None:
        """Decide waiting requests again soon (coalesced: once per loop iteration)."""
        if len(self.core) and not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._run_wake)

    def _run_wake(self) -> None:
        self._wake_scheduled = False
        self._settle(self.core.wake())
        self._arm_timer()

    def _settle(self, decided: Decided) -> None:
        for r, d in decided:
            self._resolve(r.rid, d)

    def _resolve(self, rid: int, d: Dispatch | Reject) -> None:
        fut = self._futs.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(d)

    def _arm_timer(self) -> None:
        at = self.core.next_timer()
        if at == self._timer_at and (at is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is None:
            return
        self._timer = self._call_at(at, self._on_timer)

    def _loop_call_at(self, at: float, fn: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(max(0.0, at - self.clock.now()), fn)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.wake()
