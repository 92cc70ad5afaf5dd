"""The engine's waiting queue and its choice of preemption victim, as vLLM V1's scheduler
makes them under ``--scheduling-policy`` (:data:`SCHEDULING`).

* ``fcfs`` (vLLM's default): a new request joins the tail; a preempted one goes back to
  the head; when KV runs out, the victim is the **newest** running request.
* ``priority``: every request carries a ``priority`` (lower is served first). The queue
  is ordered by ``(priority, arrival at the engine)``, and a preempted request re-enters
  at its place in that order (vLLM's priority queue has no head to put it back at); the
  victim is the running request that comes **last** in that order — vLLM's
  ``max(running, key=(priority, arrival_time))``. Admission stays head-of-line (no
  skipping), and a waiting request never preempts a running one: preemption happens only
  when a running request's next tokens do not fit, as in vLLM.

Ties (same priority, same arrival time) go by submission order, so runs are deterministic.
Entries of requests aborted while waiting stay in the queue and are dropped when they
reach the head (:meth:`head`).
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, Protocol, TypeVar

from slorouter.engine.results import Rid

SCHEDULING = ("fcfs", "priority")


class Queued(Protocol):
    rid: Rid
    state: int
    priority: float
    submitted: float
    seq: int


R = TypeVar("R", bound=Queued)


class FcfsQueue(Generic[R]):
    """First come, first served; preempted requests back at the head."""

    __slots__ = ("_done", "_q")

    reorders = False  # a preemption victim is never a request already scheduled in the step

    def __init__(self, done: int) -> None:
        self._q: deque[R] = deque()
        self._done = done  # the state of an aborted request

    def add(self, r: R) -> None:
        self._q.append(r)

    def requeue(self, r: R) -> None:
        self._q.appendleft(r)

    def head(self) -> R:
        """The next request to admit (call only while a live request waits)."""
        q = self._q
        while q[0].state == self._done:
            q.popleft()
        return q[0]

    def pop(self) -> None:
        """Remove :meth:`head`."""
        self._q.popleft()

    def victim(self, running: dict[Rid, R]) -> Rid:
        return next(reversed(running))


class PriorityQueue(Generic[R]):
    """Lowest ``(priority, arrival)`` first; preemption takes the highest."""

    __slots__ = ("_done", "_heap")

    reorders = True  # the victim may be a request that already got its share of the step

    def __init__(self, done: int) -> None:
        self._heap: list[tuple[float, float, int, R]] = []
        self._done = done

    def add(self, r: R) -> None:
        heapq.heappush(self._heap, (r.priority, r.submitted, r.seq, r))

    requeue = add

    def head(self) -> R:
        h = self._heap
        while h[0][3].state == self._done:
            heapq.heappop(h)
        return h[0][3]

    def pop(self) -> None:
        heapq.heappop(self._heap)

    def victim(self, running: dict[Rid, R]) -> Rid:
        return max(running.values(), key=lambda r: (r.priority, r.submitted, r.seq)).rid


def make_queue(scheduling: str, done: int) -> FcfsQueue[R] | PriorityQueue[R]:
    if scheduling == "fcfs":
        return FcfsQueue(done)
    if scheduling == "priority":
        return PriorityQueue(done)
    raise ValueError(f"scheduling must be one of {', '.join(SCHEDULING)}, got {scheduling!r}")
