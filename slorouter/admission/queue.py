"""The router's admission queue: requests a policy deferred, in the order to retry them.

Pure and synchronous (no I/O, no clock of its own); the live dispatcher and the offline
fleet simulator drive the same code, through :class:`~slorouter.admission.core.AdmissionCore`
(docs/policies.md §7 and §9 have the full rules and why).

* **Keys.** :func:`~slorouter.admission.priority.priority` is a request's latest useful
  start (its slack is ``key - now``); it does not depend on ``now``, so heaps suffice.
* **Lanes.** On time (key ≥ now), per tier *and* home (:class:`~slorouter.values.Scope`);
  late (and best effort), per tier, oldest first, after every on-time lane. A late
  request of a tier that rejects late requests is handed to the core as due (``late``);
  one past its wait limit too (``wait_limit``).
* **On-time order.** ``slack`` (default): least slack first (EDF; ties: heavier tier,
  earlier arrival). ``gain`` (``tempo``, :mod:`slorouter.admission.gain`): densest first
  (expected gain per predicted second of service, 10 % buckets), least slack within a
  bucket — except that a lane's least-slack request goes first once its slack is within
  the **guard**, the expected wait for the next completion on the servers it may use: at
  the last wake-up before it would turn late. **Overload** (a home where an on-time
  request expired lately, :mod:`slorouter.admission.ledger`): densest first, most slack
  within a bucket, whatever the order — shed what is least dense and waited longest.
* **Draining.** :meth:`AdmissionQueue.drain` repeatedly takes the best head among the
  lanes of tiers not blocked in this wake-up; a ``Defer`` blocks its tier until the next
  wake-up; at most ``max_tries`` decisions per wake-up.

Driving it::

    q = AdmissionQueue()
    q.push(req, priority(req, snapshot), cost=c, bucket=k, expires_at=t, home=h)  # after a Defer
    due = q.expire(now)                                     # [(req, "late" | "wait_limit")]
    results = q.drain(lambda r: policy.select(r, tracker.snapshot()), now)   # on wake-up
    wake = q.next_timer(now)                                # the next retry or expiry

Wake the drain on arrivals, completions, fleet changes and at ``next_timer()``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final

from slorouter.admission.gain import CompletionGap
from slorouter.admission.ledger import Ledger
from slorouter.values import Decision, Defer, RequestInfo

_HeapEntry = tuple[float, float, float, int, int]  # (key, -weight, arrival, seq, rid)
_DenseEntry = tuple[int, float, int, int]  # (-density bucket, -key, seq, rid)
_GainEntry = tuple[int, float, int, int]  # (-density bucket, key, seq, rid)
_LateEntry = tuple[float, int, int]  # (arrival, seq, rid)
_Lane = tuple[str, Hashable]  # (tier, home): one on-time lane
LATE, WAIT_LIMIT = "late", "wait_limit"  # why a request left the queue as due
ANY_HOME: Final = object()  # waiting_on_time: of any home


class AdmissionQueue:
    """Two-lane priority queue of deferred requests, heaps per lane (tier and home) (see
    module docs). O(log n) push/pop, O(1) remove (lazy deletion, heaps compacted when
    mostly stale)."""

    def __init__(self, max_tries: int = 16, order: str = "slack") -> None:
        self.max_tries = max_tries
        self.order = "slack"  # or "gain" (set_order): the on-time order outside overload
        self._gain: dict[_Lane, list[_GainEntry]] = {}  # on time, gain order, per lane
        self._servers: dict[_Lane, int] = {}  # servers a lane's requests may use
        self.gap = CompletionGap()  # the gain order's starvation guard
        self._seq = itertools.count()
        self._on: dict[_Lane, list[_HeapEntry]] = {}  # on time, EDF, per lane
        self._dense: dict[_Lane, list[_DenseEntry]] = {}  # on time, overload order, per lane
        self._late: dict[str, list[_LateEntry]] = {}  # late (and best effort), per tier
        self._reqs: dict[int, RequestInfo] = {}
        self._late_rids: set[int] = set()
        self._n_on: dict[_Lane, int] = {}  # on-time requests per lane
        self._lane: dict[int, _Lane] = {}  # on-time rid -> its lane
        self.books = Ledger()  # on-time work per home and density bucket; overloaded homes
        self._retry: dict[int, float] = {}
        self._retry_heap: list[tuple[float, int]] = []
        self._expiry: dict[int, float] = {}
        self._expiry_heap: list[tuple[float, int]] = []
        self._due: list[tuple[RequestInfo, str]] = []
        self.set_order(order)

    def set_order(self, order: str) -> None:
        """``slack`` (least slack first) or ``gain`` (densest first, least slack within a
        bucket, with the starvation guard): the on-time order of homes not overloaded."""
        if order not in ("slack", "gain"):
            raise ValueError(f"queue order: {order!r} is not slack or gain")
        if order == "gain" and self.order != "gain":
            self._gain = {lane: [(b, -k, q, r) for b, k, q, r in d] for lane, d in self._dense.items()}
            for g in self._gain.values():
                heapq.heapify(g)
        self.order = order

    def guard(self, lane: _Lane) -> float:
        """The gain order's guard for ``lane`` (:class:`~slorouter.admission.gain.CompletionGap`)."""
        return self.gap.guard(self._servers.get(lane, 1))

    def __len__(self) -> int:
        return len(self._reqs) + len(self._due)

    def __contains__(self, rid: object) -> bool:
        return rid in self._reqs

    @property
    def overloaded(self) -> bool:
        """Whether any home is overloaded (an on-time request of it expired lately)."""
        return self.books.overloaded

    @property
    def work(self) -> float:
        """Predicted server-seconds of the on-time lane, every home."""
        return self.books.work

    def push(
        self,
        request: RequestInfo,
        key: float,
        retry_at: float | None = None,
        *,
        cost: float = 0.0,
        bucket: int = 0,
        expires_at: float = math.inf,
        home: Hashable = None,
        servers: int = 1,
    ) -> None:
        """Queue a request with its :func:`~slorouter.admission.priority.priority` key
        (and the ``retry_at`` of the ``Defer`` that queued it, if any), its predicted
        ``cost`` (server-seconds) and density ``bucket`` (:mod:`slorouter.admission.overload`),
        the time its wait limit ends (``expires_at``) and its ``home`` (:class:`~slorouter.values.Scope`),
        with the number of ``servers`` it may use."""
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
        lane = (tier, home)
        heapq.heappush(self._on.setdefault(lane, []), (key, -request.tier.weight, request.arrival, seq, rid))
        heapq.heappush(self._dense.setdefault(lane, []), (-bucket, -key, seq, rid))
        if self.order == "gain":
            heapq.heappush(self._gain.setdefault(lane, []), (-bucket, key, seq, rid))
            self._servers[lane] = max(1, servers)
        self._n_on[lane] = self._n_on.get(lane, 0) + 1
        self._lane[rid] = lane
        self.books.add(rid, home, cost, bucket)

    def _off_time(self, rid: int) -> None:
        """``rid`` leaves the on-time lane: its work is no longer ahead of anyone."""
        lane = self._lane.pop(rid, None)
        if lane is None:
            return
        self._n_on[lane] -= 1
        self.books.remove(rid)

    def _take(self, rid: int) -> RequestInfo | None:
        req = self._reqs.pop(rid, None)
        if req is None:
            return None
        self._off_time(rid)
        self._retry.pop(rid, None)
        self._expiry.pop(rid, None)
        self._late_rids.discard(rid)
        return req

    def remove(self, rid: int) -> RequestInfo | None:
        """Forget a request (cancelled by its client, or refused by the core); its heap
        entries are dropped lazily."""
        return self._take(rid)

    def is_late(self, rid: int) -> bool:
        """True when the request is in the second (best-effort) lane: late, or no SLO."""
        return rid in self._late_rids

    def _on_time(self, rid: int) -> bool:
        return rid in self._lane

    def cost_of(self, rid: int) -> float:
        """Predicted work (server-seconds) of an on-time queued request (0: none)."""
        return self.books.cost_of(rid)

    def mark_overloaded(self, rid: int, now: float) -> None:
        """A queued on-time request turned out late (e.g. the policy found it so): its
        home is overloaded (see :mod:`slorouter.admission.ledger`)."""
        exp = self._expiry.get(rid)
        req = self._reqs.get(rid)
        hold = math.inf if exp is None or req is None else exp - req.arrival
        self.books.heat(self.books.home_of(rid), now + hold)

    def _clean(self, now: float) -> None:
        """Drop removed entries from the heads; hand heads that turned late to the core
        (tiers that reject late requests) or move them to the late lane."""
        self.books.cool(now)
        for lane, h in self._on.items():
            while h and (not self._on_time(h[0][4]) or h[0][0] < now):
                key, _, arrival, seq, rid = heapq.heappop(h)
                if not self._on_time(rid):
                    continue
                req = self._reqs[rid]
                by_waiting = key >= arrival  # else late on arrival: its prompt, not the load
                if by_waiting:
                    self.mark_overloaded(rid, now)
                if by_waiting and req.tier.rejects_late:
                    self._take(rid)
                    self._due.append((req, LATE))
                else:
                    self._off_time(rid)
                    heapq.heappush(self._late.setdefault(lane[0], []), (arrival, seq, rid))
                    self._late_rids.add(rid)
            live = self._n_on.get(lane, 0)
            if len(h) > 2 * live + 32:
                h[:] = [e for e in h if self._on_time(e[4])]
                heapq.heapify(h)
            for d in (self._dense.get(lane), self._gain.get(lane)):
                if d is None:
                    continue
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

    def waiting_on_time(self, now: float, home: Hashable = ANY_HOME) -> bool:
        """Whether any queued request (of ``home``, if given) can still meet its SLO.
        When none can, a new on-time request of that home comes first anyway: it can be
        decided at once, without a wake-up of the late lane (an arrival frees no room)."""
        self._clean(now)
        if home is ANY_HOME:
            return bool(self.books)
        return self.books.waiting(home)

    def _head(self, lane: _Lane, hot: frozenset[Hashable], now: float) -> tuple[int, Any] | None:
        """A lane's head as a comparable ``(order, entry)``: overloaded homes' lanes in
        overload order (0), the others in EDF order (1) — or, in the gain order, densest
        first (1) unless the lane's least-slack request is within its guard (-1, EDF)."""
        if lane[1] in hot:
            d = self._dense.get(lane)
            return (0, d[0]) if d else None
        h = self._on[lane]
        if self.order == "gain":
            if h and h[0][0] - now <= self.guard(lane):
                return (-1, h[0])
            g = self._gain.get(lane)
            return (1, g[0]) if g else None
        return (1, h[0]) if h else None

    def _heap(self, lane: _Lane, order: int) -> tuple[list[Any], int]:
        """The heap a head of ``order`` came from, and where its entries hold the rid."""
        if order == 0:
            return self._dense[lane], 3
        if order == 1 and self.order == "gain":
            return self._gain[lane], 3
        return self._on[lane], 4

    def ordered(self, now: float) -> Iterator[RequestInfo]:
        """Queued requests in service order: the on-time lane (EDF, or the overload order
        for overloaded homes, those first), then the late lane by arrival. O(n log n); for
        inspection — :meth:`drain` does not sort the whole queue."""
        self._clean(now)
        hot = self.books.hot_homes()
        entries: list[tuple[int, Any]] = []
        gain = self.order == "gain"
        for lane in self._on:
            if lane[1] in hot:
                entries += [(0, e) for e in self._dense.get(lane, ()) if self._on_time(e[3])]
            elif gain:  # (a snapshot: the guard is applied at each wake-up)
                entries += [(1, e) for e in self._gain.get(lane, ()) if self._on_time(e[3])]
            else:
                entries += [(2, e) for e in self._on[lane] if self._on_time(e[4])]
        on = [e[4] if o == 2 else e[3] for o, e in sorted(entries)]
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
        """Decide queued requests in order: repeatedly the best head (on-time lanes in
        EDF or overload order, then the late lane by arrival) among the tiers not blocked
        in this wake-up. Requests that got ``Dispatch`` or ``Reject`` are removed and
        returned with their decision, in order; deferred ones stay (with their
        ``retry_at``), and block their tier for the rest of the wake-up. At most
        ``max_tries`` decisions are made. Call :meth:`expire` first (at the same
        ``now``): due requests are not here."""
        self._clean(now)
        out: list[tuple[RequestInfo, Decision]] = []
        blocked: set[str] = set()
        reqs = self._reqs
        tries = 0
        hot = self.books.hot_homes()  # the order of this wake-up (a 429 in it changes the next)
        while tries < self.max_tries:  # the on-time lanes
            best: _Lane | None = None
            best_head: tuple[int, Any] | None = None
            for lane in self._on:
                if lane[0] in blocked:
                    continue
                head = self._head(lane, hot, now)
                if head is not None and (best_head is None or head < best_head):
                    best, best_head = lane, head
            if best is None or best_head is None:
                break
            order, entry = best_head
            h, at = self._heap(best, order)
            heapq.heappop(h)
            rid = entry[at]
            req = reqs.get(rid)
            if req is None or not self._on_time(rid):
                continue
            tries += 1
            if self._decided(req, rid, decide, out):
                continue
            blocked.add(best[0])
            heapq.heappush(h, entry)
        while tries < self.max_tries:  # the late lane
            tier: str | None = None
            late_head: _LateEntry | None = None
            for t, lh in self._late.items():
                if lh and t not in blocked and (late_head is None or lh[0] < late_head):
                    tier, late_head = t, lh[0]
            if tier is None or late_head is None:
                break
            lh = self._late[tier]
            heapq.heappop(lh)
            rid = late_head[2]
            req = reqs.get(rid)
            if req is None or rid not in self._late_rids:
                continue
            tries += 1
            if self._decided(req, rid, decide, out):
                continue
            blocked.add(tier)
            heapq.heappush(lh, late_head)
        self.next_retry(now)  # this was the wake-up for every retry time up to now: drop them
        return out

    def _decided(
        self,
        req: RequestInfo,
        rid: int,
        decide: Callable[[RequestInfo], Decision],
        out: list[tuple[RequestInfo, Decision]],
    ) -> bool:
        """A dispatch or reject takes the head out into ``out`` (True); a defer keeps it (False)."""
        d = decide(req)
        if not isinstance(d, Defer):
            self._take(rid)
            out.append((req, d))
            return True
        self._set_retry(rid, d.retry_at)
        return False
