"""The offline fleet simulator: the live router's decision path on simulated engines.

It runs **the same objects** as the proxy — a policy from the registry, the
:class:`~slorouter.state.tracker.Tracker` with its lifecycle hooks, the online latency
and length models as tracker listeners, the :class:`~slorouter.admission.AdmissionQueue`
— under a :class:`~slorouter.clock.ManualClock`, with one
:class:`~slorouter.engine.model.EngineModel` per server instead of HTTP.

One run is a :class:`~slorouter.fleetsim.events.Run`: an event heap with a small named
handler per event (an arrival, an engine's step end, a router's retry timer, a replica's
sync tick, the autoscaler's tick, a server joining). Idle servers cost nothing.

With ``SimOptions.scaling`` the fleet changes during the run (:mod:`slorouter.fleetsim.scaling`):
a scaler ticks on the clock, servers it asks for join after the provisioning delay with a
fresh engine each, released ones leave once drained, and the summary gains an
``autoscale`` section (provisioned server-seconds over the arrivals' span, the actions);
``servers`` and the per-server figures then use the mean provisioned fleet.

Each finished request is judged by :class:`~slorouter.fleetsim.verdicts.Verdicts` with
:mod:`slojudge`'s predicate (the router's and the load generator's). A request of a tier
with a deadline carries ``deadline_at`` (arrival + deadline), as live. Deterministic
under the seed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from slorouter.actuation.scaling import DeferWatch
from slorouter.admission import DecisionLog
from slorouter.autoscale.scaler import Scaler
from slorouter.clock import ManualClock
from slorouter.engine.model import EngineModel
from slorouter.fleetsim.bound import auto_bins
from slorouter.fleetsim.events import ProgressFn, Run
from slorouter.fleetsim.metrics import Records, missed, summarize
from slorouter.fleetsim.replicas import ReplicaOptions, SyncDriver, build_router
from slorouter.fleetsim.scaling import ScalingOptions, SimScaling
from slorouter.fleetsim.scenario import Scenario
from slorouter.fleetsim.verdicts import Verdicts
from slorouter.fleetsim.workload import Workload, generate
from slorouter.policy.base import Policy
from slorouter.state.backends import Backend, BackendSet

__all__ = ["FleetSim", "ProgressFn", "SimOptions", "SimResult", "run_once"]


@dataclass(frozen=True, slots=True)
class SimOptions:
    sync_tokens: int = 64
    learn: bool = True  # latency and length models learn online (else: priors + warm start)
    drain_s: float = 120.0  # after the last arrival, stop at most this much later
    max_tries: int = 16  # admission-queue decisions per wake-up
    max_queue: int | None = None  # the router queue's count limit (policy.max_queued: none by default)
    max_wait_s: float | None = None  # policy.max_queue_wait_s (None: each tier's, from its objective)
    latency_quantile: float = 0.9
    length_quantile: float = 0.9
    miss_log: bool = False  # SimResult.misses: one row per request that missed (fleet_metrics.missed)
    decision_log: bool = False  # SimResult.decision_log / .events: for replay comparisons
    replicas: ReplicaOptions = field(default_factory=ReplicaOptions)  # router replicas (fleetsim/replicas.py)
    scaling: ScalingOptions | None = None  # autoscaling (fleetsim/scaling.py); one router only


@dataclass(slots=True)
class SimResult:
    summary: dict[str, Any]
    wall_s: float
    cpu_s: float
    decisions: int
    steps: int
    events: int
    misses: list[dict[str, Any]] | None = None
    decision_log: DecisionLog | None = None
    # what the router saw, in order: ("arrive", t, rid) | ("tokens", t, rid, n) |
    # ("finish", t, rid, status) | ("wake", t) — replayable through the live dispatcher
    events_log: list[tuple[Any, ...]] | None = None
    # replicas sharing the load picture: exchanges with the store per replica per second
    sync_exchanges_per_s: float | None = None


class FleetSim:
    def __init__(
        self,
        scn: Scenario,
        policy_kind: str,
        *,
        rate: float,
        servers: int | None = None,
        requests: int | None = None,
        params: Mapping[str, Any] | None = None,
        seed: int | None = None,
        options: SimOptions | None = None,
        workload: Workload | None = None,
    ) -> None:
        self.scn = scn
        self.opt = options or SimOptions()
        self.seed = scn.seed if seed is None else seed
        self.n_servers = servers or scn.servers
        self.rate = rate
        self.wl = workload or generate(scn, rate, requests, self.seed)
        self.clock = ManualClock(0.0)
        tiers = self.wl.tiers
        bins = dict(scn.bins) if scn.bins is not None and servers in (None, scn.servers) else None
        if bins is None:
            bins = auto_bins(scn, self.n_servers)
        backends: list[Backend] = []
        for tier in tiers:
            for _ in range(bins.get(tier.name, 0)):
                backends.append(Backend(f"s{len(backends)}", f"sim://s{len(backends)}", tier=tier.name))
        self.backends = BackendSet(backends, tiers)
        self.decision_log: DecisionLog | None = [] if self.opt.decision_log else None
        self.events_log: list[tuple[Any, ...]] | None = [] if self.opt.decision_log else None
        ro = self.opt.replicas
        if ro.replicas < 1:
            raise ValueError("replicas must be >= 1")
        multi = ro.replicas > 1 and ro.sync
        sc = self.opt.scaling
        if sc is not None and ro.replicas > 1:
            raise ValueError("autoscaling runs with one router (as live: not with replicas)")
        self.routers = [
            build_router(
                scn,
                policy_kind,
                params,
                self.clock,
                self.backends,
                self.seed,
                latency_quantile=self.opt.latency_quantile,
                length_quantile=self.opt.length_quantile,
                learn=self.opt.learn,
                max_queue=self.opt.max_queue,
                max_wait_s=self.opt.max_wait_s,
                max_tries=self.opt.max_tries,
                log=self.decision_log if k == 0 else None,
                holder=f"r{k}" if multi else None,
                quota=ro.quota,
                sync_ms=ro.sync_ms,
                share_learning=ro.share_learning,
                autoscaling=sc is not None,
            )
            for k in range(ro.replicas)
        ]
        self.syncer = SyncDriver(self.routers, ro) if multi else None
        first = self.routers[0]
        self.tracker, self.core = first.tracker, first.core
        self.latency, self.lengths = first.latency, first.lengths
        self.engines = [
            EngineModel(
                scn.profile,
                seed=self.seed * 1000 + i,
                noise=scn.noise,
                keep_history=True,
                scheduling=scn.scheduling,
            )
            for i in range(len(backends))
        ]
        self.index = {b.id: i for i, b in enumerate(backends)}
        self.ids = [b.id for b in backends]  # engine index -> server id
        self.records = Records(len(self.wl))
        self.call_arrival = list(self.wl.arrival)  # a released workflow call: when it was sent
        self.verdicts = Verdicts(self.wl, self.records, self.call_arrival)
        self.scaling: SimScaling | None = None
        if sc is not None:
            self.scaling = SimScaling(sc, self.backends, self.wl.arrival[0] if len(self.wl) else 0.0)
            scaler = self.scaling.scaler
            if isinstance(scaler, Scaler):  # its inputs, wired as the router wires them (app/scaling.py)
                self.tracker.add_listener(scaler.observe_outcome)
                self.core.set_policy(DeferWatch(self.policy, scaler))

    @property
    def policy(self) -> Policy:
        return cast(Policy, self.core.policy)

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """Replace the (first router's) policy before :meth:`run` (e.g. a recording
        wrapper in tests)."""
        self.core.set_policy(policy)

    # -- the run ---------------------------------------------------------------------

    def run(self, progress: ProgressFn | None = None) -> SimResult:
        t0 = time.perf_counter()
        c0 = time.process_time()
        wl, clock = self.wl, self.clock
        run = Run(self)
        run.loop(progress)
        if progress is not None:
            progress(run.n_roots, run.n_roots)
        if wl.has_workflows:
            self.verdicts.judge_workflows()
        arrivals, n, rec, scaling = wl.arrival, len(wl), self.records, self.scaling
        span = arrivals[-1] - arrivals[0] if n > 1 else 1.0
        makespan = clock.now() - (arrivals[0] if n else 0.0)
        window = (arrivals[0], arrivals[-1]) if n else (0.0, 0.0)
        provisioned = None if scaling is None else scaling.server_seconds(*window)
        summary = summarize(
            rec,
            wl.tier,
            [t.name for t in wl.tiers],
            servers=len(self.engines) if provisioned is None else provisioned / span,
            span_s=span,
            makespan_s=makespan,
            busy_server_s=run.busy,
            workload=wl,
        )
        if scaling is not None and provisioned is not None:
            good = summary["overall"]["good"]
            summary["overall"]["server_seconds_per_good"] = provisioned / good if good else None
            summary["autoscale"] = scaling.summary(*window)
        misses = None
        if self.opt.miss_log:
            names = [t.name for t in wl.tiers]
            misses = missed(
                rec,
                wl.arrival,
                wl.prompt,
                wl.output,
                [names[k] for k in wl.tier],
                {b.id: b.tier for b in self.backends.backends},
            )
        syncer, n_rt = self.syncer, len(self.routers)
        return SimResult(
            summary,
            time.perf_counter() - t0,
            time.process_time() - c0,
            sum(r.core.decisions for r in self.routers),
            run.steps,
            run.events,
            misses,
            self.decision_log,
            run.ev,
            None
            if syncer is None or not n
            else syncer.exchanges / n_rt / max(clock.now() - arrivals[0], 1e-9),
        )


def run_once(
    scn: Scenario,
    policy_kind: str,
    rate: float,
    *,
    servers: int | None = None,
    requests: int | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    options: SimOptions | None = None,
    progress: ProgressFn | None = None,
) -> SimResult:
    sim = FleetSim(
        scn,
        policy_kind,
        rate=rate,
        servers=servers,
        requests=requests,
        params=params,
        seed=seed,
        options=options,
    )
    return sim.run(progress)
