"""The routers of a simulated fleet: one, or several replicas sharing the load picture.

Each :class:`SimRouter` is what one live router process holds — its tracker, latency and
length models (learning from what *it* observes), policy, admission core and, with
replicas, its :class:`~slorouter.state.sync.LoadSync` — built exactly as
:func:`slorouter.app.build_app` builds them. With ``replicas > 1`` the simulator spreads
arrivals over them at random (as a TCP load balancer would), and every ``sync_ms`` each
replica publishes its row to an in-process :class:`~slorouter.state.store.MemoryStore`
and absorbs the others' (ticks staggered evenly across replicas) — the same sync code the
live router runs over shared memory or Redis, rows carrying what each replica's latency
model learned from (every replica's model learns from all the outcomes, as live;
``share_learning: false``: each from its own). ``sync: false`` is the control (replicas
never see each other's load); ``quota: false`` turns the herding guard off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from slorouter.admission import AdmissionCore, DecisionLog
from slorouter.clock import ManualClock
from slorouter.fleetsim.scenario import Scenario
from slorouter.fleetsim.workload import mean_lengths, output_sample
from slorouter.models.latency import OnlineLatency, build_latency
from slorouter.models.lengths import OnlineLengths, build_lengths
from slorouter.models.workflows import WorkflowBook
from slorouter.policy import registry
from slorouter.policy.base import Policy, PolicyContext
from slorouter.state.backends import BackendSet, Health
from slorouter.state.learning import LearningShare
from slorouter.state.store import MemoryStore
from slorouter.state.sync import LoadSync
from slorouter.state.tracker import Tracker


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    replicas: int = 1
    sync_ms: float = 100.0  # publish/absorb interval of each replica (0: before every decision)
    quota: bool = True  # the herding guard (see slorouter.state.sync)
    sync: bool = True  # False: the no-sync control
    # event-driven publishing: a replica whose own row changed (a placement, a departure)
    # exchanges at most this long after its last exchange, not only at its next tick
    # (0: ticks only; the default is state.sync.event_ms's)
    event_ms: float = 25.0
    # every replica's latency model learns from every replica's outcomes (published with
    # the rows: slorouter.state.learning), as live; False: each from its own only
    share_learning: bool = True


@dataclass(slots=True)
class SimRouter:
    tracker: Tracker
    core: AdmissionCore
    latency: OnlineLatency
    lengths: OnlineLengths
    sync: LoadSync | None
    timer_at: float = math.inf
    workflows: WorkflowBook = field(default_factory=WorkflowBook)  # stage budgets, as app/build.py


def build_router(
    scn: Scenario,
    policy_kind: str,
    params: Mapping[str, Any] | None,
    clock: ManualClock,
    backends: BackendSet,
    seed: int,
    *,
    latency_quantile: float,
    length_quantile: float,
    learn: bool,
    max_queue: int | None,
    max_tries: int,
    max_wait_s: float | None = None,
    log: DecisionLog | None = None,
    holder: str | None = None,
    quota: bool = True,
    sync_ms: float = 100.0,
    share_learning: bool = True,
    autoscaling: bool = False,
) -> SimRouter:
    warm = scn.workload.length_warmup
    rho = 0.0
    if warm:  # a router that has been running knows the traffic's prompt/output ratio
        mp, mo, _ = mean_lengths(scn)
        rho = mp / mo
    # the router is seeded with the engines' own profile, as a user who ran
    # `slorouter profile` on their servers: a measured prior, whatever its provenance
    prior = replace(scn.profile, source=f"profile {scn.profile.name}")
    latency = build_latency(clock, quantile=latency_quantile, profile=prior, prefill_ratio=rho)
    lengths = build_lengths(clock, quantile=length_quantile, default_output_tokens=256)
    if warm:
        sample = output_sample(scn, warm, seed)
        for tier in backends.tiers:
            lengths.observe(tier.name, sample)
    tracker = Tracker(clock, backends, Health(b.id for b in backends.backends), latency, lengths)
    if learn:
        tracker.add_listener(latency.observe_outcome)
        tracker.add_listener(lengths.observe_outcome)
    p = dict(scn.policies.get(policy_kind, {}))
    p.update(params or {})
    policy: Policy = registry.build(policy_kind, p, PolicyContext(clock, seed, autoscaling))
    core = AdmissionCore(
        policy, tracker, max_queue=max_queue, max_wait_s=max_wait_s, max_tries=max_tries, log=log
    )
    sync = None
    if holder is not None:
        # a row keeps its observations for two exchange intervals (a reader reads at
        # least once an interval), and at Δ = 0 (a reader reads at its own decisions) 1 s
        learning = (
            LearningShare(latency, clock.now, keep_s=max(2 * sync_ms / 1000.0, 1.0))
            if learn and share_learning
            else None
        )
        sync = LoadSync(
            tracker,
            holder,
            learning=learning,
            quota=quota and sync_ms > 0,
            control=lambda: core.policy.shared_state(),  # type: ignore[attr-defined]
            adopt=lambda states: core.policy.adopt_shared(states),  # type: ignore[attr-defined]
        )
    book = WorkflowBook()
    tracker.add_listener(book.observe_outcome)
    return SimRouter(tracker, core, latency, lengths, sync, workflows=book)


class SyncDriver:
    """The replicas' ticks over one in-process store."""

    def __init__(self, routers: list[SimRouter], opt: ReplicaOptions) -> None:
        self.routers = routers
        self.opt = opt
        self.store = MemoryStore()
        self.interval = opt.sync_ms / 1000.0
        self.event_s = opt.event_ms / 1000.0 if opt.sync_ms > 0 else 0.0
        n = len(routers)
        self.next_at = [math.inf] * n  # each replica's next exchange (heap entries at other times are stale)
        self.last_at = [-math.inf] * n  # and its last one
        self.early: list[tuple[float, int]] = []  # early exchanges to schedule (time, replica)
        self.exchanges = 0
        if self.event_s > 0:
            for k, r in enumerate(routers):
                assert r.sync is not None
                r.sync.on_due = lambda k=k, clock=r.tracker.clock: self._due(k, clock.now())

    def _due(self, k: int, now: float) -> None:
        """Replica ``k``'s own row changed since its last exchange: exchange early."""
        at = max(now, self.last_at[k] + self.event_s)
        if at < self.next_at[k]:
            self.next_at[k] = at
            self.early.append((at, k))

    def first_ticks(self, start: float) -> list[float]:
        """Each replica's first tick (staggered evenly over one interval)."""
        n = len(self.routers)
        self.next_at = [start + self.interval * (k + 1) / n for k in range(n)]
        return list(self.next_at)

    def current(self, k: int, t: float) -> bool:
        """Whether a tick of replica ``k`` taken from the heap at ``t`` is its next
        exchange (not one an early exchange replaced)."""
        return t == self.next_at[k]

    def tick(self, k: int, now: float) -> bool:
        """Replica ``k`` publishes its row and absorbs the others'; its next tick is one
        interval later. True when some backend's load went down (the replica's queue
        should be woken)."""
        r = self.routers[k]
        sync = r.sync
        assert sync is not None
        self.exchanges += 1
        self.last_at[k] = now
        self.next_at[k] = now + self.interval
        self.store.now = now
        self.store.publish(sync.row(now))
        before = {b: ld.running for b, ld in r.tracker.loads.items()}
        sync.absorb(self.store.rows(), now)
        return any(ld.running < before.get(b, 0) for b, ld in r.tracker.loads.items())

    def sync_all(self, k: int, now: float) -> bool:
        """Δ = 0: every replica's current counts, then replica ``k`` absorbs them (the
        perfect-sharing reference: nothing is stale, so the quota has nothing to guard)."""
        self.store.now = now
        for r in self.routers:
            assert r.sync is not None
            self.store.publish(r.sync.row(now))
        r = self.routers[k]
        assert r.sync is not None
        before = {b: ld.running for b, ld in r.tracker.loads.items()}
        r.sync.absorb(self.store.rows(), now)
        return any(ld.running < before.get(b, 0) for b, ld in r.tracker.loads.items())
