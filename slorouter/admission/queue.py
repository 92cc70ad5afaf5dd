"""The router's admission queue: requests a policy deferred, in the order to retry them.

Pure and synchronous (no I/O, no clock of its own); the live dispatcher and the offline
fleet simulator drive the same code, through :class:`~slorouter.admission.core.AdmissionCore`.

Ordering
--------
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
(key < now: its SLO can no longer be met). A late request of a tier that rejects late
requests (``Tier.when_late: reject``, the default) leaves the queue then — it is handed
to the core as *due* (:meth:`AdmissionQueue.expire`), which answers it 429; one of a
``best_effort`` tier, or one that was late on arrival (key < arrival: its prompt cannot
meet its TTFT even on an idle server, so retrying would not help), moves to the late
lane, where it is served after the on-time lane, oldest first (best-effort requests
share it) — so a hopeless request never blocks the others. Each lane is kept **per
tier** (one heap each): a wake-up takes the best head among the tiers not yet blocked,
so a tier whose head cannot go (e.g. late requests a policy holds for spare room) never
hides another tier's requests behind it.

**Overload order.** While no on-time request has expired, the on-time lane is served
earliest latest-start first (EDF: every request that can be served in time is). Once
one expires, the queue is *overloaded* — it holds more than the fleet can serve in
time — and until the on-time lane next runs empty it is served **densest first**
(weight per predicted server-second, :mod:`slorouter.admission.overload`; 10 %
buckets), and within a density bucket **most slack first**. EDF under overload serves
every request at the last moment: the one with the least slack goes first, starts at
the edge of its TTFT, misses on the first slow step, and blocks its tier's fresher
requests that would still fit — while the work of lowest value per unit of capacity
should be what is shed. Expiry sheds the rest: what is least dense and waited longest.

**Wait limits.** A request pushed with ``expires_at`` is handed to the core as due
(``"wait_limit"``) at that time if still queued (the tier's wait limit, derived or
``policy.max_queue_wait_s``).

Driving it::

    q = AdmissionQueue()
    q.push(req, priority(req, snapshot), cost=c, bucket=k, expires_at=t)   # after a Defer
    due = q.expire(now)                                     # [(req, "late" | "wait_limit")]
    results = q.drain(lambda r: policy.select(r, tracker.snapshot()), now)   # on wake-up
    for req, decision in results: ...                       # Dispatch / Reject (removed)
    wake = q.next_timer(now)                                # the next retry or expiry

Wake the drain on arrivals, completions, fleet changes and at ``next_timer()``.
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
_DenseEntry = tuple[int, float, int, int]  # (-density bucket, -key, seq, rid)
_LateEntry = tuple[float, int, int]  # (arrival, seq, rid)
LATE, WAIT_LIMIT = "late", "wait_limit"  # why a request left the queue as due


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
    """Two-lane priority queue of deferred requests, heaps per tier and lane (see module
    docs). O(log n) push/pop, O(1) remove (lazy deletion, heaps compacted when mostly stale)."""

    def __init__(self, max_tries: int = 16) -> None:
        self.max_tries = max_tries
        self.overloaded = False  # an on-time request expired since the on-time lane was last empty
        self._seq = itertools.count()
        self._on: dict[str, list[_HeapEntry]] = {}  # on time, EDF, per tier
        self._dense: dict[str, list[_DenseEntry]] = {}  # on time, overload order, per tier
        self._late: dict[str, list[_LateEntry]] = {}  # late (and best effort), per tier
        self._reqs: dict[int, RequestInfo] = {}
        self._late_rids: set[int] = set()
        self._n_on: dict[str, int] = {}  # on-time requests per tier
        self._cost: dict[int, tuple[float, int]] = {}  # on-time rid -> (cost, density bucket)
        self._bucket_work: dict[int, float] = {}  # density bucket -> on-time work (server-s)
        self.work = 0.0  # predicted server-seconds of the on-time lane
        self._retry: dict[int, float] = {}
        self._retry_heap: list[tuple[float, int]] = []
        self._expiry: dict[int, float] = {}
        self._expiry_heap: list[tuple[float, int]] = []
        self._due: list[tuple[RequestInfo, str]] = []

    def __len__(self) -> int:
        return len(self._reqs) + len(self._due)

    def __contains__(self, rid: object) -> bool:
        return rid in self._reqs

    def push(
        self,
        request: RequestInfo,
        key: float,
        retry_at: float | None = None,
        *,
        cost: float = 0.0,
        bucket: int = 0,
        expires_at: float = math.inf,
    ) -> None:
        """Queue a request with its :func:`priority` key (and the ``retry_at`` of the
        ``Defer`` that queued it, if any), its predicted ``cost`` (server-seconds) and
        density ``bucket`` (:mod:`slorouter.admission.overload`), and the time its wait
        limit ends (``expires_at``)."""
        rid = request.rid
        if rid in self._reqs:
            raise ValueError(f"request {rid} is already queued")
        self._reqs[rid] = request
        self._set_retry(rid, retry_at)
        if expires_at < math.inf:
            self._expiry[rid] = expires_at
            heapq.heappush(self._expiry_heap, (expires_at, rid))
        seq = next(self._seq)
        tier = request.tier.name
        if math.isinf(key) and key > 0:
            heapq.heappush(self._late.setdefault(tier, []), (request.arrival, seq, rid))
            self._late_rids.add(rid)
            return
        heapq.heappush(self._on.setdefault(tier, []), (key, -request.tier.weight, request.arrival, seq, rid))
        heapq.heappush(self._dense.setdefault(tier, []), (-bucket, -key, seq, rid))
        self._n_on[tier] = self._n_on.get(tier, 0) + 1
        self._cost[rid] = (cost, bucket)
        self._bucket_work[bucket] = self._bucket_work.get(bucket, 0.0) + cost
        self.work += cost

    def _off_time(self, rid: int, tier: str) -> None:
        """``rid`` leaves the on-time lane: its work is no longer ahead of anyone."""
        c = self._cost.pop(rid, None)
        if c is None:
            return
        n = self._n_on[tier] - 1
        self._n_on[tier] = n
        if not any(self._n_on.values()):
            self.work = 0.0  # no float drift survives an empty lane
            self._bucket_work.clear()
            return
        self.work -= c[0]
        self._bucket_work[c[1]] -= c[0]

    def _take(self, rid: int) -> RequestInfo | None:
        req = self._reqs.pop(rid, None)
        if req is None:
            return None
        self._off_time(rid, req.tier.name)
        self._retry.pop(rid, None)
        self._expiry.pop(rid, None)
        self._late_rids.discard(rid)
        return req

    def remove(self, rid: int) -> RequestInfo | None:
        """Forget a request (cancelled by its client); its heap entries are dropped lazily."""
        return self._take(rid)

    def is_late(self, rid: int) -> bool:
        """True when the request is in the second (best-effort) lane: late, or no SLO."""
        return rid in self._late_rids

    def _on_time(self, rid: int) -> bool:
        return rid in self._cost

    def cost_of(self, rid: int) -> float:
        """Predicted work (server-seconds) of an on-time queued request (0: none)."""
        c = self._cost.get(rid)
        return 0.0 if c is None else c[0]

    def work_denser(self, bucket: int) -> float:
        """Predicted work (server-seconds) of the on-time requests denser than ``bucket``:
        what is served before a request of that bucket while the queue is overloaded."""
        return sum(w for b, w in self._bucket_work.items() if b > bucket)

    def _clean(self, now: float) -> None:
        """Drop removed entries from the heads; hand heads that turned late to the core
        (tiers that reject late requests) or move them to the late lane."""
        for tier, h in self._on.items():
            while h and (not self._on_time(h[0][4]) or h[0][0] < now):
                key, _, arrival, seq, rid = heapq.heappop(h)
                if not self._on_time(rid):
                    continue
                req = self._reqs[rid]
                by_waiting = key >= arrival  # else late on arrival: its prompt, not the load
                if by_waiting:
                    self.overloaded = True
                if by_waiting and req.tier.rejects_late:
                    self._take(rid)
                    self._due.append((req, LATE))
                else:
                    self._off_time(rid, tier)
                    heapq.heappush(self._late.setdefault(tier, []), (arrival, seq, rid))
                    self._late_rids.add(rid)
            live = self._n_on.get(tier, 0)
            if len(h) > 2 * live + 32:
                h[:] = [e for e in h if self._on_time(e[4])]
                heapq.heapify(h)
            d = self._dense.get(tier)
            if d is not None:
                if len(d) > 2 * live + 32:
                    d[:] = [e for e in d if self._on_time(e[3])]
                    heapq.heapify(d)
                while d and not self._on_time(d[0][3]):
                    heapq.heappop(d)
        for h2 in self._late.values():
            while h2 and h2[0][2] not in self._reqs:
                heapq.heappop(h2)

    def expire(self, now: float) -> list[tuple[RequestInfo, str]]:
        """Take out the requests due at ``now``: late ones of tiers that reject late
        requests (``"late"``) and those past their wait limit (``"wait_limit"``), in that
        order; the caller answers them."""
        self._clean(now)
        h = self._expiry_heap
        while h and h[0][0] <= now:
            at, rid = heapq.heappop(h)
            if self._expiry.get(rid) == at:
                req = self._take(rid)
                if req is not None:
                    self._due.append((req, WAIT_LIMIT))
        due, self._due = self._due, []
        return due

    def waiting_on_time(self, now: float) -> bool:
        """Whether any queued request can still meet its SLO (the on-time lane is not
        empty). When it is empty, a new on-time request comes first anyway: it can be
        decided at once, without a wake-up of the late lane (an arrival frees no room)."""
        self._clean(now)
        return bool(self._cost)

    def ordered(self, now: float) -> Iterator[RequestInfo]:
        """Queued requests in service order: the on-time lane (EDF, or the overload order),
        then the late lane by arrival. O(n log n); for inspection — :meth:`drain` does not
        sort the whole queue."""
        self._clean(now)
        if self.overloaded:
            on = [e[3] for e in sorted(e for h in self._dense.values() for e in h if self._on_time(e[3]))]
        else:
            on = [e[4] for e in sorted(e for h in self._on.values() for e in h if self._on_time(e[4]))]
        late = sorted(e for h in self._late.values() for e in h if e[2] in self._reqs)
        seen: set[int] = set()
        for rid in [*on, *(le[2] for le in late)]:
            if rid not in seen:
                seen.add(rid)
                yield self._reqs[rid]

    def peek(self, now: float) -> RequestInfo | None:
        return next(self.ordered(now), None)

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

    def next_timer(self, now: float) -> float | None:
        """When the queue next needs a wake-up even if nothing else happens: ``now`` if
        requests are due, else the earliest of the next ``Defer.retry_at``, the next
        on-time request turning late, and the next wait limit (None: never)."""
        self._clean(now)
        if self._due:
            return now
        at = self.next_retry(now)
        best = math.inf if at is None else at
        for h in self._on.values():
            if h and h[0][0] < best:
                best = math.nextafter(h[0][0], math.inf)  # late once now > key
        eh = self._expiry_heap
        while eh and self._expiry.get(eh[0][1]) != eh[0][0]:
            heapq.heappop(eh)
        if eh and eh[0][0] < best:
            best = eh[0][0]
        return None if best == math.inf else best

    def drain(
        self, decide: Callable[[RequestInfo], Decision], now: float
    ) -> list[tuple[RequestInfo, Decision]]:
        """Decide queued requests in order: repeatedly the best head (on-time lane in EDF
        or overload order, then the late lane by arrival) among the tiers not blocked in
        this wake-up. Requests that got ``Dispatch`` or ``Reject`` are removed and returned
        with their decision, in order; deferred ones stay (with their ``retry_at``), and
        block their tier for the rest of the wake-up. At most ``max_tries`` decisions are
        made. Call :meth:`expire` first (at the same ``now``): due requests are not here."""
        self._clean(now)
        out: list[tuple[RequestInfo, Decision]] = []
        blocked: set[str] = set()
        reqs = self._reqs
        tries = 0
        dense = self.overloaded
        on_lanes: dict[str, Any] = self._dense if dense else self._on
        for lane_on in (True, False):
            lanes: dict[str, Any] = on_lanes if lane_on else self._late
            at = (3 if dense else 4) if lane_on else 2  # where an entry keeps its rid
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
                rid = best_head[at]
                req = reqs.get(rid)
                if (
                    req is None
                    or (lane_on and not self._on_time(rid))
                    or (not lane_on and rid not in self._late_rids)
                ):
                    continue
                tries += 1
                d = decide(req)
                if not isinstance(d, Defer):
                    self._take(rid)
                    out.append((req, d))
                    continue
                blocked.add(best)
                self._set_retry(rid, d.retry_at)
                heapq.heappush(h, best_head)
        if self.overloaded and not self._cost:
            self.overloaded = False  # the on-time lane ran empty: back to EDF
        self.next_retry(now)  # this was the wake-up for every retry time up to now: drop them
        return out
