"""The in-flight tracker: the only writer of per-backend counters.

Lifecycle of every request (each hook is O(1); none does I/O)::

    on_arrival(req)                      queued in the router (counted per tier)
    on_dispatch(rid, backend)            resident on a backend: running, prompt tokens, peak KV
    on_retry(rid, backend)               moved to another backend before its first byte
    on_tokens(rid, n)                    n output tokens arrived in one chunk (first call = first token)
    on_usage(rid, prompt, completion)    the engine's own counts replace the estimates
    on_finish(rid, status) -> Outcome    exactly once; later calls return None

After any mix of these, once every request is finished, every counter is exactly zero
(see tests/property/test_tracker_property.py). Finished requests are reported to the
registered listeners (latency model, length model, metrics) as an :class:`Outcome`.

The per-request records (:class:`~slorouter.state.resident.Resident`) stay private to
the tracker: what policies see of a backend is its
:class:`~slorouter.state.load.BackendLoad`, aggregates only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from slojudge import on_time_in_chunk
from slorouter.clock import Clock
from slorouter.models.base import LatencyView, LengthView
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.eligibility import Eligibility
from slorouter.state.load import SLACK_WINDOW, BackendLoad, SlackEntry
from slorouter.state.resident import Resident
from slorouter.state.snapshot import QueuedSum, Snapshot
from slorouter.values import Outcome, RequestInfo, Status

if TYPE_CHECKING:
    from slorouter.state.sync import LoadSync

OutcomeListener = Callable[[Outcome], None]


_MAX_SAMPLES: Final = 4096  # step samples kept per request (bounded memory)


class Tracker:
    def __init__(
        self,
        clock: Clock,
        backends: BackendSet,
        health: Health,
        latency: LatencyView,
        lengths: LengthView,
    ) -> None:
        self.clock = clock
        self.health = health
        self.latency = latency
        self.lengths = lengths
        self.loads: dict[str, BackendLoad] = {}
        self.requests: dict[int, Resident] = {}
        self._on: dict[str, dict[int, Resident]] = {}  # backend -> residents, placement order
        self._slack_fns: dict[str, Callable[[], tuple[SlackEntry, ...]]] = {}
        self.queued: dict[str, int] = {}  # this process's queued requests per tier
        self.remote_queued: Mapping[str, int] = {}  # other processes' (slorouter.state.sync)
        self.sync: LoadSync | None = None  # set by LoadSync: loads then include other processes'
        self._listeners: list[OutcomeListener] = []
        self._watchers: list[set[str]] = []
        self.backends = backends
        self.pools = Eligibility(backends)
        self.set_backends(backends)

    # -- configuration ---------------------------------------------------------------

    def set_backends(self, backends: BackendSet) -> None:
        """Swap the backend set. Loads of removed backends stay until their requests end."""
        self.backends = backends
        if self.pools.backends is not backends:
            self.pools.set_backends(backends)
        for b in backends.backends:
            self._load(b.id)

    def _load(self, backend_id: str) -> BackendLoad:
        load = self.loads.get(backend_id)
        if load is None:
            load = self.loads[backend_id] = BackendLoad(backend_id)
            self._on[backend_id] = {}
            self._slack_fns[backend_id] = lambda: self._slack_of(backend_id)
        return load

    def _slack_of(self, backend_id: str) -> tuple[SlackEntry, ...]:
        """The slack summary of a backend (see :mod:`slorouter.state.load`)."""
        out: list[SlackEntry] = []
        seen = 0
        for r in reversed(self._on[backend_id].values()):  # newest first
            seen += 1
            if seen > SLACK_WINDOW:
                break
            last = r.last_token_at
            if last is None:
                continue  # still prefilling
            slo = r.req.tier.slo
            if slo.tpot_s is None or slo.ttft_s is None:
                continue
            out.append((r.req.arrival + slo.ttft_s, r.output_tokens, last, slo.tpot_s))
        return tuple(out)

    def changed(self, backend_id: str) -> None:
        """Tell the change feeds (:meth:`watch`) that a backend's load changed from
        outside (another process's row absorbed)."""
        for w in self._watchers:
            w.add(backend_id)

    def add_listener(self, fn: OutcomeListener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: OutcomeListener) -> None:
        self._listeners = [f for f in self._listeners if f != fn]

    def watch(self, owner: object) -> set[str]:
        """A new set into which the tracker adds, from now on, the id of every backend
        whose ``running``, ``peak_kv`` or ``prefill_tokens`` changed — the inputs of load
        keys a policy caches per server (see :mod:`slorouter.policy.binindex`). The caller
        reads and clears it; it never holds more than the fleet's ids. The feed lives as
        long as ``owner`` (e.g. the policy; one replaced by a config reload stops costing
        anything once it is garbage)."""
        s: set[str] = set()
        self._watchers.append(s)
        weakref.finalize(owner, self._unwatch, weakref.ref(self), id(s))
        return s

    @staticmethod
    def _unwatch(tracker_ref: weakref.ref[Tracker], sid: int) -> None:
        t = tracker_ref()
        if t is not None:
            t._watchers = [w for w in t._watchers if id(w) != sid]

    # -- reads -----------------------------------------------------------------------

    def eligible(self, tier: str | None = None) -> tuple[Backend, ...]:
        """Healthy backends (of ``tier``, or all), cached until health or the set changes."""
        return self.pools.view(None, self.health).eligible(tier)

    def snapshot(self, request: RequestInfo | None = None) -> Snapshot:
        """What a policy sees; for ``request``, only the backends that may serve it
        (:mod:`slorouter.state.eligibility`)."""
        view = self.pools.view(request, self.health)
        return Snapshot(
            now=self.clock.now(),
            backends=self.backends,
            loads=self.loads,
            healthy=view.healthy,
            latency=self.latency,
            lengths=self.lengths,
            queued=self.queued if not self.remote_queued else QueuedSum(self.queued, self.remote_queued),
            eligible=view.eligible,
            watch=self.watch,
            fleet=view.fleet,
        )

    def in_flight(self) -> int:
        return len(self.requests)

    def residents(self, backend_id: str) -> tuple[Resident, ...]:
        """The requests resident on a backend, in placement order (for inspection and
        tests; policies read :class:`BackendLoad` aggregates instead)."""
        return tuple(self._on.get(backend_id, {}).values())

    def all_zero(self) -> bool:
        """True when no request is known and every counter is zero."""
        return (
            not self.requests
            and not any(self.queued.values())
            and all(load.is_zero() for load in self.loads.values())
        )

    # -- lifecycle hooks -------------------------------------------------------------

    def on_arrival(self, req: RequestInfo) -> None:
        if req.rid in self.requests:
            raise ValueError(f"request {req.rid} already known")
        self.requests[req.rid] = Resident(req)
        self.queued[req.tier.name] = self.queued.get(req.tier.name, 0) + 1
        if self.sync is not None:
            self.sync.on_arrival(self.clock.now())

    def on_dispatch(self, rid: int, backend_id: str) -> None:
        """Queued -> resident on ``backend_id``. Dispatching again to another backend
        before the first token moves it (the router's decision may be narrowed later)."""
        r = self.requests.get(rid)
        if r is None:
            return
        if r.backend is not None:
            if r.backend != backend_id:
                self.on_retry(rid, backend_id)
            return
        tier = r.req.tier.name
        self.queued[tier] -= 1
        r.dispatched_at = self.clock.now()
        load = self.loads.get(backend_id)
        if load is not None:  # the real load: without the herding guard's phantom
            ph = load.phantom
            r.at_dispatch = (load.running - ph[0], load.kv_tokens - ph[1], load.prefill_tokens - ph[2])
        else:
            r.at_dispatch = (0, 0, 0)
        self._attach(r, backend_id)

    def on_retry(self, rid: int, backend_id: str) -> None:
        """Move a request that failed before its first byte to another backend."""
        r = self.requests.get(rid)
        if r is None or r.backend is None or r.first_token_at is not None:
            return
        self._detach(r)
        r.at_dispatch = None  # its first token now spans two servers: not a TTFT sample
        self._attach(r, backend_id)

    def on_tokens(self, rid: int, n: int = 1) -> None:
        """The hot path of a stream (once per engine read): attribute loads and stores,
        one sample tuple, and the per-token deadline judged inline; the slack summary is
        marked stale only for requests it can hold (a TTFT and a TPOT)."""
        r = self.requests.get(rid)
        if r is None or n <= 0:
            return
        backend = r.backend
        if backend is None:
            return
        now = self.clock.now()
        load = self.loads[backend]
        i = r.output_tokens
        last = r.last_token_at
        if r.first_token_at is None:
            r.first_token_at = now
            load.prefilling -= 1
            load.prefill_tokens -= r.prompt_tokens
            for w in self._watchers:
                w.add(backend)
        elif last is not None and len(r.samples) < _MAX_SAMPLES:
            ph = load.phantom  # labelled with the real global load (no phantom)
            sample = ((now - last) / n, load.running - ph[0], load.prompt_tokens + load.output_tokens - ph[1])
            if n == 1:
                r.samples.append(sample)
            else:
                r.samples.extend([sample] * n)
        r.last_token_at = now
        req = r.req
        slo = req.tier.slo
        ttft = slo.ttft_s
        if ttft is not None:  # token i is due at arrival + ttft + i * tpot (Slo.token_deadline)
            tpot = slo.tpot_s or 0.0
            due0 = req.arrival + ttft
            late = now - (due0 + i * tpot)
            if late > r.max_lateness:
                r.max_lateness = late
            r.on_time += on_time_in_chunk(now - due0, tpot, i, n)
            if slo.tpot_s is not None:  # in the slack summary (_slack_of): now stale
                load.mark_slack(self._slack_fns[backend])
        out = i + n
        if out <= r.bound:  # peak_kv (prompt + max(bound, output)) unchanged
            r.output_tokens = out
            load.output_tokens += n
        else:
            self._add_output(r, load, n)

    def on_usage(self, rid: int, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        r = self.requests.get(rid)
        if r is None:
            return
        load = self.loads.get(r.backend) if r.backend is not None else None
        if prompt_tokens is not None and prompt_tokens >= 0 and prompt_tokens != r.prompt_tokens:
            d = prompt_tokens - r.prompt_tokens
            r.prompt_tokens = prompt_tokens
            if load is not None:
                load.prompt_tokens += d
                load.peak_kv += d
                if r.first_token_at is None:
                    load.prefill_tokens += d
                for w in self._watchers:
                    w.add(load.backend_id)
        if completion_tokens is not None and completion_tokens >= 0 and completion_tokens != r.output_tokens:
            d, slo = completion_tokens - r.output_tokens, r.req.tier.slo
            if d > 0 and r.first_token_at is not None and slo.ttft_s is not None:
                # tokens the engine reports beyond the chunks counted: judged as arriving now
                late = self.clock.now() - r.req.ttft_deadline
                r.on_time += on_time_in_chunk(late, slo.tpot_s or 0.0, r.output_tokens, d)
            if load is None:
                r.output_tokens = completion_tokens
            else:
                load.mark_slack(self._slack_fns[load.backend_id])
                self._add_output(r, load, completion_tokens - r.output_tokens)

    def on_finish(self, rid: int, status: Status) -> Outcome | None:
        r = self.requests.pop(rid, None)
        if r is None:
            return None
        now = self.clock.now()
        req = r.req
        if r.backend is None:
            self.queued[req.tier.name] -= 1
        else:
            self._detach(r)
        lateness: float | None = r.max_lateness if r.first_token_at is not None else None
        out = Outcome(
            rid=rid,
            tier=req.tier.name,
            backend=r.backend,
            status=status,
            arrival=req.arrival,
            finished_at=now,
            prompt_tokens=r.prompt_tokens,
            output_tokens=r.output_tokens,
            dispatched_at=r.dispatched_at,
            first_token_at=r.first_token_at,
            dispatch_load=r.at_dispatch,
            max_lateness_s=lateness,
            step_samples=tuple(r.samples),
            model=req.model,
            key_id=req.key_id,
            on_time_tokens=r.on_time,
            request=req,
        )
        for fn in self._listeners:
            fn(out)
        return out

    # -- internals -------------------------------------------------------------------

    def _attach(self, r: Resident, backend_id: str) -> None:
        load = self._load(backend_id)
        r.backend = backend_id
        self._on[backend_id][r.req.rid] = r
        load.running += 1
        load.mark_slack(self._slack_fns[backend_id])
        load.prompt_tokens += r.prompt_tokens
        load.output_tokens += r.output_tokens
        load.peak_kv += r.prompt_tokens + max(r.bound, r.output_tokens)
        if r.first_token_at is None:
            load.prefilling += 1
            load.prefill_tokens += r.prompt_tokens
        tier = r.req.tier.name
        load.tier_counts[tier] = load.tier_counts.get(tier, 0) + 1
        if self.sync is not None:
            peak = r.prompt_tokens + max(r.bound, r.output_tokens)
            self.sync.on_attach(load, r.prompt_tokens, peak, r.first_token_at is None)
        for w in self._watchers:
            w.add(backend_id)

    def _detach(self, r: Resident) -> None:
        assert r.backend is not None
        load = self.loads[r.backend]
        on = self._on[r.backend]
        del on[r.req.rid]
        load.running -= 1
        load.mark_slack(self._slack_fns[r.backend])
        load.prompt_tokens -= r.prompt_tokens
        load.output_tokens -= r.output_tokens
        load.peak_kv -= r.prompt_tokens + max(r.bound, r.output_tokens)
        if r.first_token_at is None:
            load.prefilling -= 1
            load.prefill_tokens -= r.prompt_tokens
        tier = r.req.tier.name
        load.tier_counts[tier] -= 1
        if not load.tier_counts[tier]:
            del load.tier_counts[tier]
        if self.sync is not None:
            self.sync.on_detach()
        for w in self._watchers:
            w.add(r.backend)
        if not on and r.backend not in self.backends:
            del self.loads[r.backend]
            del self._on[r.backend]
            del self._slack_fns[r.backend]

    def _add_output(self, r: Resident, load: BackendLoad, d: int) -> None:
        """Change a resident's output count by ``d``, keeping ``peak_kv`` exact: a
        resident contributes ``prompt + max(bound, output)``; a request that outgrows
        its predicted length gets a new bound from the length model."""
        before = max(r.bound, r.output_tokens)
        r.output_tokens += d
        load.output_tokens += d
        if r.output_tokens > r.bound:
            r.bound = max(
                r.output_tokens,
                self.lengths.bound(r.req.tier.name, r.output_tokens, r.req.max_tokens),
            )
        grown = max(r.bound, r.output_tokens) - before
        if grown:
            load.peak_kv += grown
            for w in self._watchers:
                w.add(load.backend_id)
