"""The offline fleet simulator: the live router's decision path on simulated engines.

It runs **the same objects** as the proxy — a policy from the registry, the
:class:`~slorouter.state.tracker.Tracker` with its lifecycle hooks, the online latency
and length models as tracker listeners, the :class:`~slorouter.admission.AdmissionQueue`
— under a :class:`~slorouter.clock.ManualClock`, with one
:class:`~slorouter.engine.model.EngineModel` per server instead of HTTP.

Time advances from event to event (next arrival, next step end of any engine, next
``Defer.retry_at``); idle servers cost nothing. What the tracker sees:

* ``on_arrival`` / ``on_dispatch`` / ``on_finish`` at the exact times;
* ``on_tokens``: at the first token, then every ``sync_tokens`` tokens (default 32) and
  at the end — the live proxy counts every chunk; per-token updates would dominate the
  cost here. Counters lag by < ``sync_tokens`` tokens per request; step samples for the
  latency model are the mean gap over those tokens.

With ``SimOptions.scaling`` the fleet changes during the run (:mod:`slorouter.fleetsim.scaling`):
a scaler ticks on the clock, servers it asks for join after the provisioning delay with a
fresh engine each, released ones leave once drained, and the summary gains an
``autoscale`` section (provisioned server-seconds over the arrivals' span, the actions);
``servers`` and the per-server figures then use the mean provisioned fleet.

Per-token deadlines are checked exactly, from the engine's step end times and each
request's token segments (:mod:`slorouter.engine.model`), with :mod:`slojudge`'s predicate
(the router's and the load generator's): a request's on-schedule tokens, its verdict and
its service gain (:func:`~slorouter.fleetsim.metrics.summarize`). A request of a tier
with a deadline carries ``deadline_at`` (arrival + deadline), as live. Deterministic
under the seed.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import slojudge
from slorouter.actuation.scaling import DeferWatch
from slorouter.admission import DecisionLog
from slorouter.autoscale.baselines import EngineGauges
from slorouter.autoscale.scaler import Scaler
from slorouter.clock import ManualClock
from slorouter.engine.model import EngineModel, RequestTooLarge, Segment
from slorouter.fleetsim.bound import auto_bins
from slorouter.fleetsim.metrics import ERROR, OK, REJECTED, Records, missed, on_time_tokens, summarize
from slorouter.fleetsim.replicas import ReplicaOptions, SyncDriver, build_router
from slorouter.fleetsim.scaling import ScalingOptions, SimScaling
from slorouter.fleetsim.scenario import Scenario
from slorouter.fleetsim.workload import Workload, generate
from slorouter.policy.base import Policy
from slorouter.state.backends import Backend, BackendSet
from slorouter.values import Dispatch, Reject, RequestInfo, SloClass, Status

ProgressFn = Callable[[int, int], None]
BACKLOG_GRACE_S = 10.0  # see FleetSim._record: best-effort work started this long after arrivals end


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
                autoscaling=sc is not None,
            )
            for k in range(ro.replicas)
        ]
        self.syncer = SyncDriver(self.routers, ro) if multi else None
        first = self.routers[0]
        self.tracker, self.core = first.tracker, first.core
        self.latency, self.lengths = first.latency, first.lengths
        self.engines = [
            EngineModel(scn.profile, seed=self.seed * 1000 + i, noise=scn.noise, keep_history=True)
            for i in range(len(backends))
        ]
        self.index = {b.id: i for i, b in enumerate(backends)}
        self.ids = [b.id for b in backends]  # engine index -> server id
        self.records = Records(len(self.wl))
        self.call_arrival = list(self.wl.arrival)  # a released workflow call: when it was sent
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
        wl, clock, routers, syncer = self.wl, self.clock, self.routers, self.syncer
        engines, index, rec = self.engines, self.index, self.records
        n_rt = len(routers)
        k_sync = self.opt.sync_tokens
        # (time, seq, who): who >= 0 an engine's step end; -1-k router k's retry timer;
        # -1-n_rt-k router k's sync tick; SCALE_TICK / SCALE_READY the autoscaler's
        heap: list[tuple[float, int, int]] = []
        seq = 0
        synced: dict[int, int] = {}
        milestones: list[dict[int, list[int]]] = [{} for _ in engines]
        pending = [False] * len(engines)  # a step end of this engine is in the heap
        arrivals = wl.arrival
        n = len(arrivals)
        owner = [0] * n  # the router each request arrived at
        # multi-call workflows (fleetsim/workflows.py): calls without predecessors arrive at their
        # time; the others are released into `released` when all their predecessors finished
        has_wf = wl.has_workflows
        roots = [r for r in range(n) if not wl.deps[r]] if has_wf else range(n)
        n_roots = len(roots)
        left = [len(d) for d in wl.deps] if has_wf else []
        waiters: dict[int, list[int]] = {}
        for r in range(n) if has_wf else ():
            for d in wl.deps[r]:
                waiters.setdefault(d, []).append(r)
        released: list[tuple[float, int]] = []
        call_arrival = self.call_arrival
        steps = events = 0
        busy = 0.0
        dslo_met = rec.dslo
        stop_at = (arrivals[-1] if n else 0.0) + self.opt.drain_s
        ok_status = Status.OK
        ev = self.events_log if n_rt == 1 else None
        pick = random.Random(self.seed * 7919 + 17)
        every_decision = syncer is not None and syncer.interval <= 0
        if syncer is not None and not every_decision:
            for k, at in enumerate(syncer.first_ticks(arrivals[0] if n else 0.0)):
                seq += 1
                heapq.heappush(heap, (at, seq, -1 - n_rt - k))
        scaling, ids = self.scaling, self.ids
        scale_tick, scale_ready = -1 - 2 * n_rt, -2 - 2 * n_rt
        if scaling is not None and n:
            seq += 1
            heapq.heappush(heap, (arrivals[0] + scaling.interval_s, seq, scale_tick))

        def working() -> bool:
            return i < n_roots or bool(released) or any(len(r.core) or r.tracker.in_flight() for r in routers)

        def gauges() -> dict[str, EngineGauges]:
            assert scaling is not None
            cap = self.scn.profile.max_num_seqs
            out = {}
            for b in scaling.backends.backends:
                eng = engines[index[b.id]]
                out[b.id] = EngineGauges(eng.num_running, eng.num_waiting, eng.kv_usage, cap)
            return out

        def refit() -> None:
            """The fleet changed: engines for the servers that joined, then health and the
            backend set of every router (the order of the live swap, actuation/fleet.py)."""
            assert scaling is not None
            for sid in scaling.take_joined():
                index[sid] = len(engines)
                ids.append(sid)
                k = int(sid[1:])
                seed = self.seed * 1000 + k
                engines.append(
                    EngineModel(self.scn.profile, seed=seed, noise=self.scn.noise, keep_history=True)
                )
                milestones.append({})
                pending.append(False)
            self.backends = scaling.backends
            for r in routers:
                r.tracker.health.reset(scaling.healthy)
                r.tracker.set_backends(scaling.backends)

        def scale_event(si: int, t: float) -> None:
            nonlocal seq
            assert scaling is not None
            if si == scale_tick:
                changed = scaling.tick(routers[0].tracker.snapshot(), gauges)
                for at in scaling.take_asked():
                    seq += 1
                    heapq.heappush(heap, (at, seq, scale_ready))
                if working():
                    seq += 1
                    heapq.heappush(heap, (t + scaling.interval_s, seq, scale_tick))
            else:
                changed = scaling.arrive(t)
            if changed:
                refit()
                wake(0)

        def on_tokens(rid: int, k: int) -> None:
            if ev is not None:
                ev.append(("tokens", clock.now(), rid, k))
            routers[owner[rid]].tracker.on_tokens(rid, k)

        def settle(kr: int, decided: list[tuple[RequestInfo, Dispatch | Reject]]) -> None:
            """Apply router ``kr``'s decisions to the engines and the records."""
            nonlocal seq
            for req, d in decided:
                rid = req.rid
                if isinstance(d, Reject):
                    rec.status[rid] = REJECTED
                    rec.decision[rid] = d.reason
                    continue
                bid = d.backends[0]
                rec.wait[rid] = clock.now() - req.arrival
                rec.backend[rid] = bid
                rec.decision[rid] = d.reason
                i = index[bid]
                eng = engines[i]
                try:
                    eng.submit(rid, wl.prompt[rid], wl.output[rid], clock.now())
                except RequestTooLarge:
                    if ev is not None:
                        ev.append(("finish", clock.now(), rid, Status.ERROR))
                    routers[kr].tracker.on_finish(rid, Status.ERROR)
                    rec.status[rid] = ERROR
                    continue
                if not pending[i]:
                    end = eng.plan(clock.now())
                    if end is not None:
                        pending[i] = True
                        seq += 1
                        heapq.heappush(heap, (end, seq, i))
            rt = routers[kr]
            nr = rt.core.next_timer()
            if nr is not None and nr < rt.timer_at:
                rt.timer_at = nr
                seq += 1
                heapq.heappush(heap, (nr, seq, -1 - kr))

        def wake(kr: int) -> None:
            core = routers[kr].core
            if len(core):
                if ev is not None:
                    ev.append(("wake", clock.now()))
                if every_decision:
                    assert syncer is not None
                    syncer.sync_all(kr, clock.now())
                settle(kr, core.wake())

        i = 0
        while True:
            if syncer is not None and syncer.early:  # event-driven exchanges (fleetsim/replicas.py)
                for at, k in syncer.early:
                    seq += 1
                    heapq.heappush(heap, (at, seq, -1 - n_rt - k))
                syncer.early.clear()
            t_arr = arrivals[roots[i]] if i < n_roots else math.inf
            t_rel = released[0][0] if released else math.inf
            t_ev = heap[0][0] if heap else math.inf
            if t_arr == math.inf and t_ev == math.inf and t_rel == math.inf:
                break
            if t_rel < t_arr and t_rel <= t_ev:
                t_arr, rid_in = heapq.heappop(released)
                kr = owner[wl.unit[rid_in]]
            elif t_arr <= t_ev:
                rid_in = roots[i]
                i += 1
                kr = pick.randrange(n_rt) if n_rt > 1 else 0
            else:
                rid_in = -1
            if rid_in >= 0:
                clock.set(t_arr)
                owner[rid_in] = kr
                call_arrival[rid_in] = t_arr
                rt = routers[kr]
                v = wl.variant[rid_in]
                # as the live router resolves it (http/requests.py): arrival + the tier's
                # deadline; a call of a multi-call workflow: the workflow's deadline and its
                # stage budget from the router's workflow book
                dl = v.slo.deadline_s
                deadline_at = None if dl is None else t_arr + dl
                target_at = None
                if has_wf and v.slo.slo_class is SloClass.WORKFLOW:
                    b = rt.workflows.call(f"w{wl.unit[rid_in]}", v.name, t_arr, wl.deadline_s[rid_in] or 0.0)
                    deadline_at, target_at = b.deadline_at, b.target_at
                req = RequestInfo(
                    rid=rid_in,
                    tier=v,
                    arrival=t_arr,
                    prompt_tokens=wl.prompt[rid_in],
                    max_tokens=self.scn.workload.max_tokens,
                    output_bound=rt.lengths.bound(v.name, 0, self.scn.workload.max_tokens),
                    deadline_at=deadline_at,
                    workflow_id=None if target_at is None else f"w{wl.unit[rid_in]}",
                    target_at=target_at,
                )
                if ev is not None:
                    ev.append(("arrive", t_arr, req))
                rt.tracker.on_arrival(req)
                if every_decision:
                    assert syncer is not None
                    syncer.sync_all(kr, t_arr)
                settle(kr, rt.core.arrive(req))
                if progress is not None and i % 2000 == 0 and rid_in == roots[i - 1]:
                    progress(i, n_roots)
                continue
            t, _, si = heapq.heappop(heap)
            if t > stop_at:
                break
            if si <= scale_tick and not working():
                continue  # the run is over: a server still starting changes nothing
            events += 1
            clock.set(t)
            if si < 0:
                kr = -1 - si
                if kr < n_rt:  # a retry timer
                    rt = routers[kr]
                    if t >= rt.timer_at:
                        rt.timer_at = math.inf
                    wake(kr)
                elif si <= scale_tick:
                    scale_event(si, t)
                else:  # a sync tick
                    assert syncer is not None
                    kr -= n_rt
                    if not syncer.current(kr, t):
                        continue  # replaced by an early exchange
                    if syncer.tick(kr, t):
                        wake(kr)
                    if working():
                        seq += 1
                        heapq.heappush(heap, (syncer.next_at[kr], seq, si))
                continue
            eng = engines[si]
            pending[si] = False
            res = eng.step()
            steps += 1
            busy += res.end - res.start
            ms = milestones[si]
            idx = res.index
            for rid in cast("tuple[int, ...]", res.first_token):
                on_tokens(rid, 1)
                synced[rid] = 1
                if rid in eng:
                    ms.setdefault(idx + k_sync, []).append(rid)
            due = ms.pop(idx, None)
            if due:
                for rid in due:
                    if rid in eng:
                        g = eng.generated(rid)
                        dd = g - synced[rid]
                        if dd > 0:
                            on_tokens(rid, dd)
                            synced[rid] = g
                        ms.setdefault(idx + k_sync, []).append(rid)
            if res.finished:
                ends = eng.step_ends
                woke = 0  # bit set of routers that had a finish
                for f in res.finished:
                    rid = cast(int, f.rid)
                    dd = f.output_tokens - synced.pop(rid, 0)
                    if dd > 0:
                        on_tokens(rid, dd)
                    if ev is not None:
                        ev.append(("finish", t, rid, ok_status))
                    kr = owner[rid]
                    woke |= 1 << kr
                    out = routers[kr].tracker.on_finish(rid, ok_status)
                    if out is not None:
                        rec.dispatch_load[rid] = out.dispatch_load
                    self._record(rid, f.segments, f.first_token_step, res.end, ends, dslo_met)
                    for w in waiters.pop(rid, ()):
                        left[w] -= 1
                        if not left[w]:
                            heapq.heappush(released, (t, w))
                if every_decision:
                    woke = (1 << n_rt) - 1  # every replica sees the finish at once
                for kr in range(n_rt):
                    if woke >> kr & 1:
                        wake(kr)
                if (
                    scaling is not None
                    and scaling.leaving
                    and not (eng.num_running or eng.num_waiting)
                    and scaling.drained(ids[si], t)
                ):
                    refit()
            if not pending[si]:
                end = eng.plan(t)
                if end is not None:
                    pending[si] = True
                    seq += 1
                    heapq.heappush(heap, (end, seq, si))
        if progress is not None:
            progress(n_roots, n_roots)
        if has_wf:
            self._judge_workflows()
        span = arrivals[-1] - arrivals[0] if n > 1 else 1.0
        makespan = clock.now() - (arrivals[0] if n else 0.0)
        window = (arrivals[0], arrivals[-1]) if n else (0.0, 0.0)
        provisioned = None if scaling is None else scaling.server_seconds(*window)
        summary = summarize(
            rec,
            wl.tier,
            [t.name for t in wl.tiers],
            servers=len(engines) if provisioned is None else provisioned / span,
            span_s=span,
            makespan_s=makespan,
            busy_server_s=busy,
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
        return SimResult(
            summary,
            time.perf_counter() - t0,
            time.process_time() - c0,
            sum(r.core.decisions for r in routers),
            steps,
            events,
            misses,
            self.decision_log,
            ev,
            None
            if syncer is None or not n
            else syncer.exchanges / n_rt / max(clock.now() - arrivals[0], 1e-9),
        )

    def _record(
        self,
        rid: int,
        segs: tuple[Segment, ...],
        first_step: int,
        finished_at: float,
        ends: Any,
        dslo_met: list[bool],
    ) -> None:
        rec, wl = self.records, self.wl
        rec.status[rid] = OK
        rec.finished_at[rid] = finished_at
        arrival = self.call_arrival[rid]
        first = ends[first_step]
        ttft = first - arrival
        rec.ttft[rid] = ttft
        n_out = wl.output[rid]
        tpot_mean = (finished_at - first) / (n_out - 1) if n_out > 1 else math.nan
        rec.tpot[rid] = tpot_mean
        slo = wl.variant[rid].slo
        cls = slo.slo_class
        if cls is SloClass.LATENCY and slo.ttft_s is not None:
            tpot = slo.tpot_s or 0.0
            due0 = arrival + slo.ttft_s
            rec.on_time[rid] = on_time_tokens(ends, segs, due0, tpot)
            rec.first_on_time[rid] = slojudge.on_time(first - due0, tpot, 0)
            dslo_met[rid] = rec.on_time[rid] >= n_out
            rec.ttft_miss[rid] = ttft > slo.ttft_s + 1e-9
            rec.mean_ok[rid] = ttft <= slo.ttft_s + 1e-9 and (n_out < 2 or tpot_mean <= tpot + 1e-9)
        elif slo.deadline_s is not None:
            ok = slojudge.in_time(finished_at, self.due(rid))
            dslo_met[rid] = rec.mean_ok[rid] = ok
        else:
            # best effort has no SLO, but a rate at which its work piles up in the router
            # queue is not sustainable: one first dispatched more than BACKLOG_GRACE_S after
            # the last arrival (served only because arrivals stopped) is not counted good
            started = arrival + rec.wait[rid]
            ok = not started > wl.arrival[-1] + BACKLOG_GRACE_S
            dslo_met[rid] = rec.mean_ok[rid] = ok
            rec.backlog[rid] = not ok

    def due(self, rid: int) -> float:
        """The deadline request ``rid`` is judged by: its workflow's (a multi-call
        workflow: from its first call's arrival), else its arrival + its tier's."""
        wl = self.wl
        if wl.has_workflows and wl.variant[rid].slo.slo_class is SloClass.WORKFLOW:
            return wl.arrival[wl.unit[rid]] + (wl.deadline_s[rid] or 0.0)
        return self.call_arrival[rid] + (wl.variant[rid].slo.deadline_s or 0.0)

    def _judge_workflows(self) -> None:
        """A multi-call workflow is met when every call finished ok by its deadline: the
        verdict goes on its first call (the unit the summary counts, fleet_metrics)."""
        rec, wl = self.records, self.wl
        calls: dict[int, list[int]] = {}
        for r, u in enumerate(wl.unit):
            calls.setdefault(u, []).append(r)
        for u, rs in calls.items():
            if wl.variant[u].slo.slo_class is not SloClass.WORKFLOW:
                continue
            met = all(rec.status[r] == OK and rec.dslo[r] for r in rs)
            rec.dslo[u] = rec.mean_ok[u] = met


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
