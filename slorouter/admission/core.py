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
    core.withdraw(rid)             # a queued request's client left

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
Each request has a :class:`~slorouter.values.Scope` from the policy (``scope(request,
snapshot)``): its *home* (the servers where it comes first: the fleet for most
policies, its tier's bin for ``polyserve``) and the homes it may *reach*. A new arrival
is decided at once unless requests of its home that can still meet their SLO are
waiting: then it joins the queue (by its :func:`~slorouter.admission.priority.priority`
key) and the queue is drained in its order, so it never overtakes a more urgent waiter
that competes for the same room. Waiters of other homes do not hold it back — they
cannot use its servers before it (polyserve lets no overflow into a bin while its own
tiers wait). A best-effort or already-late arrival joins the queue whenever it is not
empty. When only late (best-effort lane) requests wait, an on-time arrival is decided at
once: an arrival frees no room, and it comes before them anyway.

Overload (docs/policies.md §9)
-----------------------------
Every request leaves the router queue within a bound, and every refusal is a 429 whose
``Retry-After`` is the predicted drain time (the work queued where the request may be
served, in server-seconds of the latency model, over the servers it may use — its
scope's reach; at least 1 s). Reasons (``SHED_REASONS``):

* ``late`` — its SLO can no longer be met and its tier says ``when_late: reject`` (the
  default): the moment its latest useful start passes in the queue, or when the policy
  finds it late (a policy's 429);
* ``wait_limit`` — it waited its tier's wait limit (``max_wait_s``, else
  :func:`~slorouter.admission.overload.default_max_wait`): a late request of a
  ``best_effort`` tier held for spare room, or a best-effort one;
* ``overload`` — on arrival, *after the policy had its chance* (the queue was drained
  with it in place, or the policy deferred it), while its home is overloaded
  (:mod:`slorouter.admission.ledger`), the work of denser requests queued in the homes
  it may reach, over the servers it may use, exceeds the time it can wait: it would be
  shed later anyway, so it is told at once. A request the policy can place now is never
  refused for overload, nor one whose own home is not overloaded;
* ``queue_full`` — ``max_queue`` requests wait (only when a count is configured).

``observe(tier, wait_s, outcome, reason)``, if given, hears every decided request
(outcome ``dispatched`` or ``rejected``; the metrics of :mod:`slorouter.metrics.admission`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from slorouter.admission import gain
from slorouter.admission.overload import cost, default_max_wait, density_bucket, workflow_max_wait
from slorouter.admission.priority import priority
from slorouter.admission.queue import LATE, WAIT_LIMIT, AdmissionQueue
from slorouter.state.snapshot import Snapshot
from slorouter.state.tracker import Tracker
from slorouter.values import Decision, Defer, Dispatch, Outcome, Reject, RequestInfo, Scope, Status


class Policy(Protocol):
    """What the core needs of a policy (:class:`slorouter.policy.base.Policy`; restated
    here because admission and policy are sibling layers that do not import each other)."""

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision: ...

    def on_dispatch(self, request: RequestInfo, backend_id: str) -> None: ...

    def on_finish(self, outcome: Outcome) -> None: ...

    def scope(self, request: RequestInfo, snapshot: Snapshot) -> Scope: ...


Decided = list[tuple[RequestInfo, Dispatch | Reject]]
# (clock time, request id, "dispatch" | "defer" | "reject", backend id or reason)
DecisionLog = list[tuple[float, int, str, str]]
# (tier, seconds in the router, "dispatched" | "rejected", shed reason or "") per decided request
Observer = Callable[[str, float, str, str], None]
OVERLOAD, QUEUE_FULL = "overload", "queue_full"
SHED_REASONS = (LATE, WAIT_LIMIT, OVERLOAD, QUEUE_FULL)
_MESSAGES = {
    LATE: "its SLO can no longer be met",
    WAIT_LIMIT: "it waited its tier's limit in the router queue",
    OVERLOAD: "the router is overloaded: requests worth more per unit of capacity wait",
    QUEUE_FULL: "the router queue is full",
}


def queue_order(policy: object) -> str:
    """The queue order a policy asks for (``queue_order``: ``slack``, the default, or
    ``gain``, :mod:`slorouter.admission.gain`)."""
    order = getattr(policy, "queue_order", "slack")
    return order if isinstance(order, str) else "slack"


def wait_to_workflow_deadline(policy: object) -> bool:
    """Whether a policy lets a workflow call wait until its workflow's deadline rather than
    its tier's per-call limit (``wait_to_workflow_deadline``; :func:`workflow_max_wait`)."""
    return getattr(policy, "wait_to_workflow_deadline", False) is True


class AdmissionCore:
    def __init__(
        self,
        policy: Policy,
        tracker: Tracker,
        *,
        max_queue: int | None = None,
        max_wait_s: float | None = None,
        max_tries: int = 16,
        log: DecisionLog | None = None,
        on_finish: Callable[[], None] | None = None,
        observe: Observer | None = None,
    ) -> None:
        """``max_queue``: most queued requests (None: no count, see module docs);
        ``max_wait_s``: the wait limit of every tier (None: each tier's own, from its
        objective). ``log``: every decision is appended to it (for replay comparisons).
        ``on_finish``: called after a request finished while others wait (a driver
        schedules a :meth:`wake` from it). ``observe``: hears every decided request."""
        self.policy = policy
        self.tracker = tracker
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.queue = AdmissionQueue(max_tries, queue_order(policy))
        self._wf_wait = wait_to_workflow_deadline(policy)
        self.log = log
        self.decisions = 0
        self.observe = observe
        self._wake_hint = on_finish
        tracker.add_listener(self._on_outcome)

    def __len__(self) -> int:
        return len(self.queue)

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.queue.set_order(queue_order(policy))
        self._wf_wait = wait_to_workflow_deadline(policy)

    def close(self) -> None:
        """Stop hearing of finished requests (a core replaced by another on the same
        tracker must not call the policy's ``on_finish`` twice)."""
        self.tracker.remove_listener(self._on_outcome)

    def set_limits(self, max_queue: int | None, max_wait_s: float | None) -> None:
        """New queue limits (a config reload); requests already queued keep their wait limit."""
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s

    def wait_limit(self, req: RequestInfo) -> float:
        """How long ``req`` may wait in the router queue."""
        if self.max_wait_s is not None:
            return self.max_wait_s
        return workflow_max_wait(req) if self._wf_wait else default_max_wait(req.tier)

    # -- the entry points ------------------------------------------------------------

    def arrive(self, req: RequestInfo) -> Decided:
        """Decide a new arrival (see module docs: at once, or in the queue's order)."""
        q = self.queue
        if len(q):
            now = self.tracker.clock.now()
            out = self._expire(now)
            snap = self.tracker.snapshot(req)
            sc = self.policy.scope(req, snap)
            key = priority(req, snap)
            if req.arrival <= key < now and req.tier.rejects_late:
                return [*out, (req, self._shed(req, LATE, sc=sc))]
            if math.isinf(key) or key < now or q.waiting_on_time(now, sc.home):
                refused = self._push(req, key, None, snap, sc)
                if refused is not None:
                    return [*out, (req, refused)]
                out += self._drain(now)
                refused = self._outlasted(req, key, sc, now)
                return out if refused is None else [*out, (req, refused)]
            return [*out, *self._first(req)]
        return self._first(req)

    def _first(self, req: RequestInfo) -> Decided:
        """The first decision of an arrival nothing of its home waits before."""
        d = self._decide(req)
        if not isinstance(d, Defer):
            return [(req, d)]
        snap = self.tracker.snapshot(req)
        sc = self.policy.scope(req, snap)
        key = priority(req, snap)
        refused = self._push(req, key, d.retry_at, snap, sc) or self._outlasted(req, key, sc, snap.now)
        return [] if refused is None else [(req, refused)]

    def wake(self) -> Decided:
        """Answer the requests due (late, past their wait limit), then decide queued
        requests again, in order (at most ``max_tries`` decisions)."""
        if not len(self.queue):
            return []
        now = self.tracker.clock.now()
        return [*self._expire(now), *self._drain(now)]

    def next_timer(self) -> float | None:
        """The clock time of the next wake-up needed (a ``Defer.retry_at``, a request
        turning late or reaching its wait limit; None: none)."""
        if not len(self.queue):
            return None
        return self.queue.next_timer(self.tracker.clock.now())

    def withdraw(self, rid: int) -> bool:
        """Take a queued request out (its client left)."""
        return self.queue.remove(rid) is not None

    def retry_after(self, req: RequestInfo, sc: Scope | None = None) -> float:
        """Predicted seconds until the work queued now where ``req`` may be served (its
        scope's reach; its own work aside) has drained over the servers it may use, at
        least 1."""
        if sc is None:
            sc = self.policy.scope(req, self.tracker.snapshot(req))
        if not sc.servers:
            return 1.0
        work = self.queue.books.work_in(sc.reach) - self.queue.cost_of(req.rid)
        return max(1.0, work / sc.servers)

    # -- internals -------------------------------------------------------------------

    def _push(
        self, req: RequestInfo, key: float, retry_at: float | None, snap: Snapshot, sc: Scope
    ) -> Reject | None:
        """Queue ``req`` in its home, or refuse it (the queue holds ``max_queue``)."""
        q = self.queue
        if self.max_queue is not None and len(q) >= self.max_queue:
            return self._shed(req, QUEUE_FULL, sc=sc)
        c = cost(req, snap)
        limit = req.arrival + self.wait_limit(req)
        # the gain order sheds by gain density too (what the work is worth per second of it)
        k = gain.density_bucket(req, snap) if q.order == "gain" else density_bucket(req, c)
        q.push(req, key, retry_at, cost=c, bucket=k, expires_at=limit, home=sc.home, servers=sc.servers)
        return None

    def _outlasted(self, req: RequestInfo, key: float, sc: Scope, now: float) -> Reject | None:
        """Refuse ``req`` — queued, on time, after the policy had its chance (the queue
        was drained, or the policy deferred it) — if its home is overloaded and the work
        of denser requests queued where it may be served, over the servers it may use,
        would outlast the time it can wait: it would only leave the queue as shed."""
        q = self.queue
        bucket = q.books.bucket_of(req.rid)
        if bucket is None or not sc.servers or not q.books.hot(sc.home):
            return None
        limit = req.arrival + self.wait_limit(req)
        can_wait = min(key, limit) if req.tier.rejects_late else limit
        if q.books.work_denser(sc.reach, bucket) / sc.servers <= can_wait - now:
            return None
        q.remove(req.rid)
        return self._shed(req, OVERLOAD, sc=sc)

    def _expire(self, now: float) -> Decided:
        return [(r, self._shed(r, why)) for r, why in self.queue.expire(now)]

    def _drain(self, now: float) -> Decided:
        got = self.queue.drain(self._decide, now)
        return [(r, d) for r, d in got if not isinstance(d, Defer)]

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
                if self.observe is not None:
                    self.observe(req.tier.name, tracker.clock.now() - req.arrival, "dispatched", "")
                return d
        if isinstance(d, Reject):
            if d.status == 429:  # a policy refuses with 429 only a request it finds late
                if req.rid in self.queue:  # it waited and still missed: its home is overloaded
                    self.queue.mark_overloaded(req.rid, tracker.clock.now())
                return self._shed(req, LATE, d.reason)
            return self._reject(req, d, "")
        if self.log is not None:
            self.log.append((tracker.clock.now(), req.rid, "defer", d.reason))
        return d

    def _shed(
        self, req: RequestInfo, why: str, message: str | None = None, *, sc: Scope | None = None
    ) -> Reject:
        d = Reject(429, message or _MESSAGES[why], retry_after_s=self.retry_after(req, sc))
        return self._reject(req, d, why)

    def _reject(self, req: RequestInfo, d: Reject, why: str) -> Reject:
        now = self.tracker.clock.now()
        if self.log is not None:
            self.log.append((now, req.rid, "reject", d.reason))
        if self.observe is not None:
            self.observe(req.tier.name, now - req.arrival, "rejected", why)
        self.tracker.on_finish(req.rid, Status.REJECTED)
        return d

    def _on_outcome(self, out: Outcome) -> None:
        self.policy.on_finish(out)
        if out.backend is not None:
            self.queue.gap.on_completion(out.finished_at, len(self.tracker.loads))
        # a request that never reached a backend (rejected, cancelled in the queue) frees nothing
        if self._wake_hint is not None and out.backend is not None and len(self.queue):
            self._wake_hint()
