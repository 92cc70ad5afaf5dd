"""The router's admission queue: requests a policy deferred, in the order to retry them.

Pure and synchronous (no I/O, no clock of its own); the live dispatcher and the offline
fleet simulator drive the same code.

Ordering (lower key = served first)
-----------------------------------
:func:`priority` gives a request's **latest useful start**: the time by which it must
be dispatched to still meet its SLO, i.e. its slack is ``priority - now``.

* ``latency``: ``ttft_deadline - prefill estimate`` (estimated on the fleet's first
  eligible backend, or 0 without one);
* ``deadline`` / ``workflow``: ``deadline_at - (prefill + output_bound · step estimate)``
  (the service-gain density idea of Tempo: work that must start soonest first; between
  equal keys the heavier tier, then the earlier arrival);
* ``best_effort``: ``+inf`` (after every SLO request, FIFO among themselves).

Because the key does not depend on ``now``, ordering by key is ordering by slack at
every moment, and a heap suffices. Two lanes: **on time** (key ≥ now) and **late**
(key < now: its SLO can no longer be met; it is served best effort, after the on-time
lane, oldest first; best-effort requests share it) — so a hopeless request never blocks
the others. Entries move from the first lane to the second lazily, when they reach the
head. Each lane is kept **per tier** (one heap each): a wake-up takes the most urgent
head among the tiers not yet blocked, so a tier whose head cannot go (e.g. late requests
a policy holds for spare room) never hides another tier's requests behind it.

Driving it::

    q = AdmissionQueue()
    q.push(req, priority(req, snapshot))                    # on arrival (or after a Defer)
    results = q.drain(lambda r: policy.select(r, tracker.snapshot()), now)   # on wake-up
    for req, decision in results: ...                       # Dispatch / Reject (removed)
    wake = q.next_retry(now)                                # earliest Defer.retry_at

Wake the drain on arrivals, completions, fleet changes and at ``next_retry()``.
:meth:`AdmissionQueue.drain` tries requests in order and stops a tier after its first
``Defer`` in that wake-up (the rest of the tier would most likely defer too), so a
wake-up costs at most ``max_tries`` decisions however long the queue is (plus
O(tiers) to find the heads).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

from slorouter.state.snapshot import Snapshot
from slorouter.values import Decision, Defer, RequestInfo, SloClass

_HeapEntry = tuple[float, float, float, int, int]  # (key, -weight, arrival, seq, rid)
_LateEntry = tuple[float, int, int]  # (arrival, seq, rid)


def priority(request: RequestInfo, snapshot: Snapshot | None = None, backend_id: str | None = None) -> float:
    """Latest useful start time of ``request`` (lower = more urgent); see module docs.

    ``snapshot`` (a :class:`~slorouter.state.snapshot.Snapshot`) refines the estimate
    with the latency model of ``backend_id`` (default: the first eligible backend)."""
    slo = request.tier.slo
    cls = slo.slo_class
    if cls is SloClass.BEST_EFFORT:
        return math.inf
    prefill = 0.0
    step = slo.tpot_s or 0.0
    if snapshot is not None:
        lat = snapshot.latency
        bid = backend_id
        if bid is None:
            pool = snapshot.eligible(None)
            bid = pool[0].id if pool else None
        if bid is not None:
            prefill = lat.prefill_time(bid, request.prompt_tokens)
            if not step:
                step = lat.step_time(bid, 1, request.prompt_tokens)
    if cls is SloClass.LATENCY:
        return request.ttft_deadline - prefill
    if request.deadline_at is not None:
        return request.deadline_at - prefill - request.output_bound * step
    if slo.deadline_s is not None:
        return request.arrival + slo.deadline_s - prefill - request.output_bound * step
    return request.ttft_deadline - prefill


class AdmissionQueue:
    """Two-lane priority queue of deferred requests, a heap per tier and lane (see module
    docs). O(log n) push/pop, O(1) remove (lazy deletion)."""

    def __init__(self, max_tries: int = 16) -> None:
        self.max_tries = max_tries
        self._seq = itertools.count()
        self._on: dict[str, list[_HeapEntry]] = {}  # on time, per tier
        self._late: dict[str, list[_LateEntry]] = {}  # late (and best effort), per tier
        self._reqs: dict[int, RequestInfo] = {}
        self._retry: dict[int, float] = {}
        self._retry_heap: list[tuple[float, int]] = []
        self._late_rids: set[int] = set()

    def __len__(self) -> int:
        return len(self._reqs)

    def __contains__(self, rid: object) -> bool:
        return rid in self._reqs

    def push(self, request: RequestInfo, key: float, retry_at: float | None = None) -> None:
        """Queue a request with its :func:`priority` key (and the ``retry_at`` of the
        ``Defer`` that queued it, if any)."""
        rid = request.rid
        if rid in self._reqs:
            raise ValueError(f"request {rid} is already queued")
        self._reqs[rid] = request
        self._set_retry(rid, retry_at)
        seq = next(self._seq)
        tier = request.tier.name
        if math.isinf(key) and key > 0:
            heapq.heappush(self._late.setdefault(tier, []), (request.arrival, seq, rid))
            self._late_rids.add(rid)
        else:
            entry = (key, -request.tier.weight, request.arrival, seq, rid)
            heapq.heappush(self._on.setdefault(tier, []), entry)

    def remove(self, rid: int) -> RequestInfo | None:
        """Forget a request (cancelled by its client); its heap entry is dropped lazily."""
        self._retry.pop(rid, None)
        self._late_rids.discard(rid)
        return self._reqs.pop(rid, None)

    def is_late(self, rid: int) -> bool:
        """True when the request is in the second (best-effort) lane: late, or no SLO."""
        return rid in self._late_rids

    def _clean(self, now: float) -> None:
        """Drop removed entries from the heads; move heads that turned late to the late lane."""
        reqs = self._reqs
        for tier, h in self._on.items():
            while h and (h[0][4] not in reqs or h[0][0] < now):
                _key, _, arrival, seq, rid = heapq.heappop(h)
                if rid in reqs:
                    heapq.heappush(self._late.setdefault(tier, []), (arrival, seq, rid))
                    self._late_rids.add(rid)
        for h2 in self._late.values():
            while h2 and h2[0][2] not in reqs:
                heapq.heappop(h2)

    def waiting_on_time(self, now: float) -> bool:
        """Whether any queued request can still meet its SLO (the on-time lane is not
        empty). When it is empty, a new on-time request comes first anyway: it can be
        decided at once, without a wake-up of the late lane (an arrival frees no room)."""
        self._clean(now)
        return any(self._on.values())

    def ordered(self, now: float) -> Iterator[RequestInfo]:
        """Queued requests in service order: on-time lane by key, then late lane by arrival.
        O(n log n); for inspection — :meth:`drain` does not sort the whole queue."""
        self._clean(now)
        on = sorted(e for h in self._on.values() for e in h if e[4] in self._reqs)
        late = sorted(e for h in self._late.values() for e in h if e[2] in self._reqs)
        seen: set[int] = set()
        for e in on:
            if e[4] not in seen:
                seen.add(e[4])
                yield self._reqs[e[4]]
        for le in late:
            if le[2] not in seen:
                seen.add(le[2])
                yield self._reqs[le[2]]

    def peek(self, now: float) -> RequestInfo | None:
        self._clean(now)
        heads_on = [h[0] for h in self._on.values() if h]
        if heads_on:
            return self._reqs[min(heads_on)[4]]
        heads_late = [h[0] for h in self._late.values() if h]
        return self._reqs[min(heads_late)[2]] if heads_late else None

    def _set_retry(self, rid: int, at: float | None) -> None:
        if at is None:
            self._retry.pop(rid, None)
        elif self._retry.get(rid) != at:
            self._retry[rid] = at
            heapq.heappush(self._retry_heap, (at, rid))

    def next_retry(self, now: float = -math.inf) -> float | None:
        """Earliest ``Defer.retry_at`` after ``now`` among queued requests (None: no timer
        needed). Times already past are dropped: a wake-up at or after them happened
        (:meth:`drain` drops those up to its ``now`` itself, so after a drain the result
        never lies in the past, with or without ``now``)."""
        h = self._retry_heap
        while h and (self._retry.get(h[0][1]) != h[0][0] or h[0][0] <= now):
            at, rid = heapq.heappop(h)
            if self._retry.get(rid) == at:
                del self._retry[rid]
        return h[0][0] if h else None

    def drain(
        self, decide: Callable[[RequestInfo], Decision], now: float
    ) -> list[tuple[RequestInfo, Decision]]:
        """Decide queued requests in order: repeatedly the most urgent head (on-time lane
        by key, then late lane by arrival) among the tiers not blocked in this wake-up.
        Requests that got ``Dispatch`` or ``Reject`` are removed and returned with their
        decision, in order; deferred ones stay (with their ``retry_at``), and block their
        tier for the rest of the wake-up. At most ``max_tries`` decisions are made."""
        self._clean(now)
        out: list[tuple[RequestInfo, Decision]] = []
        blocked: set[str] = set()
        reqs = self._reqs
        tries = 0
        for lane_on in (True, False):
            lanes: dict[str, Any] = self._on if lane_on else self._late
            while tries < self.max_tries:
                best: str | None = None
                best_head: Any = None
                for tier, h in lanes.items():
                    if h and tier not in blocked and (best_head is None or h[0] < best_head):
                        best, best_head = tier, h[0]
                if best is None:
                    break
                h = lanes[best]
                heapq.heappop(h)
                rid = best_head[4] if lane_on else best_head[2]
                req = reqs.get(rid)
                if req is not None and lane_on and best_head[0] < now:
                    # turned late since _clean: over to the late lane, decided there
                    heapq.heappush(self._late.setdefault(best, []), (best_head[2], best_head[3], rid))
                    self._late_rids.add(rid)
                    continue
                if req is None:
                    continue
                tries += 1
                d = decide(req)
                if not isinstance(d, Defer):
                    del reqs[rid]
                    self._retry.pop(rid, None)
                    self._late_rids.discard(rid)
                    out.append((req, d))
                    continue
                blocked.add(best)
                self._set_retry(rid, d.retry_at)
                heapq.heappush(h, best_head)
        self.next_retry(now)  # this was the wake-up for every retry time up to now: drop them
        return out
