"""One run of the fleet simulator: the event heap and one small handler per event.

Time advances from event to event; idle servers cost nothing. Arrivals come from the
workload's sorted list (and released workflow calls from their own heap); everything else
is an entry ``(time, seq, kind, k)`` on one heap, handled by :class:`Run`'s handler for
``kind``:

========================= ====================== ==========================================
kind                      ``k``                  handler
========================= ====================== ==========================================
:data:`STEP`              engine index           :meth:`Run.engine_step` (tokens, finishes)
:data:`TIMER`             router                 :meth:`Run.retry_timer` (a ``Defer.retry_at``)
:data:`SYNC`              router                 :meth:`Run.sync_tick` (replicas' exchanges)
:data:`SCALE_TICK`        –                      :meth:`Run.scale_tick` (the autoscaler)
:data:`SCALE_READY`       –                      :meth:`Run.server_ready` (a server joins)
========================= ====================== ==========================================

``seq`` (one counter for every entry) breaks ties in the order the entries were made.
What the tracker sees:

* ``on_arrival`` / ``on_dispatch`` / ``on_finish`` at the exact times;
* ``on_tokens``: at the first token, then every ``sync_tokens`` tokens and at the end —
  the live proxy counts every chunk; per-token updates would dominate the cost here.
  Counters lag by < ``sync_tokens`` tokens per request; step samples for the latency
  model are the mean gap over those tokens.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from slorouter.autoscale.baselines import EngineGauges
from slorouter.engine.model import EngineModel
from slorouter.engine.results import RequestTooLarge, StepResult
from slorouter.fleetsim.metrics import ERROR, REJECTED
from slorouter.values import Dispatch, Reject, RequestInfo, SloClass, Status

if TYPE_CHECKING:
    from slorouter.fleetsim.fleet import FleetSim

ProgressFn = Callable[[int, int], None]

# the kinds of heap entries (time, seq, kind, k)
STEP = 0  # engine k's step ends
TIMER = 1  # router k's retry timer
SYNC = 2  # router replica k exchanges its load row
SCALE_TICK = 3  # the autoscaler decides
SCALE_READY = 4  # a server asked for finished provisioning


class Run:
    """The state of one :meth:`FleetSim.run <slorouter.fleetsim.fleet.FleetSim.run>`: the
    heap, the arrival cursor, each request's router and token milestones, the counters."""

    def __init__(self, sim: FleetSim) -> None:
        self.sim = sim
        wl = self.wl = sim.wl
        self.clock, self.routers, self.syncer = sim.clock, sim.routers, sim.syncer
        self.engines, self.index, self.ids, self.rec = sim.engines, sim.index, sim.ids, sim.records
        self.scaling, self.verdicts = sim.scaling, sim.verdicts
        self.n_rt = len(self.routers)
        self.k_sync = sim.opt.sync_tokens
        self.heap: list[tuple[float, int, int, int]] = []
        self.seq = 0
        self.synced: dict[int, int] = {}  # tokens the tracker heard of, per request
        self.milestones: list[dict[int, list[int]]] = [{} for _ in self.engines]  # step -> rids
        self.pending = [False] * len(self.engines)  # a step end of this engine is in the heap
        arrivals = self.arrivals = wl.arrival
        n = len(arrivals)
        self.owner = [0] * n  # the router each request arrived at
        # multi-call workflows (fleetsim/workflows.py): calls without predecessors arrive at their
        # time; the others are released into `released` when all their predecessors finished
        has_wf = self.has_wf = wl.has_workflows
        self.roots = [r for r in range(n) if not wl.deps[r]] if has_wf else range(n)
        self.n_roots = len(self.roots)
        self.i = 0  # the next root arrival
        self.left = [len(d) for d in wl.deps] if has_wf else []
        self.waiters: dict[int, list[int]] = {}
        for r in range(n) if has_wf else ():
            for d in wl.deps[r]:
                self.waiters.setdefault(d, []).append(r)
        self.released: list[tuple[float, int]] = []
        self.call_arrival = sim.call_arrival
        self.steps = self.events = 0
        self.busy = 0.0
        self.stop_at = (arrivals[-1] if n else 0.0) + sim.opt.drain_s
        self.ev = sim.events_log if self.n_rt == 1 else None
        self.pick = random.Random(sim.seed * 7919 + 17)
        self.by_due = sim.scn.scheduling == "priority"  # engines ordered by each request's due time
        syncer = self.syncer
        self.every_decision = syncer is not None and syncer.interval <= 0
        if syncer is not None and not self.every_decision:
            for k, at in enumerate(syncer.first_ticks(arrivals[0] if n else 0.0)):
                self.push(at, SYNC, k)
        if self.scaling is not None and n:
            self.push(arrivals[0] + self.scaling.interval_s, SCALE_TICK, 0)
        self.handlers: tuple[Callable[[int, float], None], ...] = (
            self.engine_step,
            self.retry_timer,
            self.sync_tick,
            self.scale_tick,
            self.server_ready,
        )

    def push(self, at: float, kind: int, k: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, k))

    # -- the loop --------------------------------------------------------------------

    def loop(self, progress: ProgressFn | None = None) -> None:
        """Take the earliest of the next arrival, the next released call and the heap's
        first entry, until none is left or the drain time is over."""
        heap, released, syncer, handlers = self.heap, self.released, self.syncer, self.handlers
        arrivals, roots, n_roots, clock = self.arrivals, self.roots, self.n_roots, self.clock
        while True:
            if syncer is not None and syncer.early:  # event-driven exchanges (fleetsim/replicas.py)
                for at, k in syncer.early:
                    self.push(at, SYNC, k)
                syncer.early.clear()
            i = self.i
            t_arr = arrivals[roots[i]] if i < n_roots else math.inf
            t_rel = released[0][0] if released else math.inf
            t_ev = heap[0][0] if heap else math.inf
            if t_arr == math.inf and t_ev == math.inf and t_rel == math.inf:
                break
            if t_rel < t_arr and t_rel <= t_ev:
                t_arr, rid = heapq.heappop(released)
                self.arrive(rid, self.owner[self.wl.unit[rid]], t_arr)
            elif t_arr <= t_ev:
                rid = roots[i]
                self.i = i = i + 1
                self.arrive(rid, self.pick.randrange(self.n_rt) if self.n_rt > 1 else 0, t_arr)
            else:
                t, _, kind, k = heapq.heappop(heap)
                if t > self.stop_at:
                    break
                if kind >= SCALE_TICK and not self.working():
                    continue  # the run is over: a server still starting changes nothing
                self.events += 1
                clock.set(t)
                handlers[kind](k, t)
                continue
            if progress is not None and i % 2000 == 0 and rid == roots[i - 1]:
                progress(i, n_roots)

    def working(self) -> bool:
        return (
            self.i < self.n_roots
            or bool(self.released)
            or any(len(r.core) or r.tracker.in_flight() for r in self.routers)
        )

    # -- the router's side -----------------------------------------------------------

    def arrive(self, rid: int, kr: int, t: float) -> None:
        """Request ``rid`` reaches router ``kr`` at ``t``."""
        wl, scn = self.wl, self.sim.scn
        self.clock.set(t)
        self.owner[rid] = kr
        self.call_arrival[rid] = t
        rt = self.routers[kr]
        v = wl.variant[rid]
        # as the live router resolves it (http/requests.py): arrival + the tier's
        # deadline; a call of a multi-call workflow: the workflow's deadline and its
        # stage budget from the router's workflow book
        dl = v.slo.deadline_s
        deadline_at = None if dl is None else t + dl
        target_at = None
        path_stages = 1
        if self.has_wf and v.slo.slo_class is SloClass.WORKFLOW:
            b = rt.workflows.call(f"w{wl.unit[rid]}", v.name, t, wl.deadline_s[rid] or 0.0)
            deadline_at, target_at, path_stages = b.deadline_at, b.target_at, b.path_stages
        req = RequestInfo(
            rid=rid,
            tier=v,
            arrival=t,
            prompt_tokens=wl.prompt[rid],
            max_tokens=scn.workload.max_tokens,
            output_bound=rt.lengths.bound(v.name, 0, scn.workload.max_tokens),
            deadline_at=deadline_at,
            workflow_id=None if target_at is None else f"w{wl.unit[rid]}",
            target_at=target_at,
            path_stages=path_stages,
        )
        if self.ev is not None:
            self.ev.append(("arrive", t, req))
        rt.tracker.on_arrival(req)
        if self.every_decision:
            assert self.syncer is not None
            self.syncer.sync_all(kr, t)
        self.settle(kr, rt.core.arrive(req))

    def due(self, rid: int) -> float:
        """The priority a client gives request ``rid`` for engines that schedule by priority
        (earliest due first: an EDF queue at each engine): its first-token deadline
        (latency), its deadline (deadline), its workflow's deadline (a workflow call: the
        first call's send + D), last (best effort)."""
        wl = self.wl
        slo = wl.variant[rid].slo
        at = self.call_arrival[rid]
        if slo.slo_class is SloClass.LATENCY and slo.ttft_s is not None:
            return at + slo.ttft_s
        if slo.slo_class is SloClass.WORKFLOW and self.has_wf and wl.deadline_s[rid] is not None:
            return self.call_arrival[wl.unit[rid]] + cast(float, wl.deadline_s[rid])
        if slo.deadline_s is not None:
            return at + slo.deadline_s
        return math.inf

    def retry_timer(self, kr: int, t: float) -> None:
        rt = self.routers[kr]
        if t >= rt.timer_at:
            rt.timer_at = math.inf
        self.wake(kr)

    def wake(self, kr: int) -> None:
        """Router ``kr`` re-decides its queue (something finished, its timer, a sync)."""
        core = self.routers[kr].core
        if len(core):
            now = self.clock.now()
            if self.ev is not None:
                self.ev.append(("wake", now))
            if self.every_decision:
                assert self.syncer is not None
                self.syncer.sync_all(kr, now)
            self.settle(kr, core.wake())

    def settle(self, kr: int, decided: list[tuple[RequestInfo, Dispatch | Reject]]) -> None:
        """Apply router ``kr``'s decisions to the engines and the records."""
        rec, wl, now = self.rec, self.wl, self.clock.now()
        for req, d in decided:
            rid = req.rid
            if isinstance(d, Reject):
                rec.status[rid] = REJECTED
                rec.decision[rid] = d.reason
                continue
            bid = d.backends[0]
            rec.wait[rid] = now - req.arrival
            rec.backend[rid] = bid
            rec.decision[rid] = d.reason
            i = self.index[bid]
            eng = self.engines[i]
            try:
                if self.by_due:
                    eng.submit(rid, wl.prompt[rid], wl.output[rid], now, self.due(rid))
                else:
                    eng.submit(rid, wl.prompt[rid], wl.output[rid], now)
            except RequestTooLarge:
                if self.ev is not None:
                    self.ev.append(("finish", now, rid, Status.ERROR))
                self.routers[kr].tracker.on_finish(rid, Status.ERROR)
                rec.status[rid] = ERROR
                continue
            if not self.pending[i]:
                self.plan(i, eng, now)
        rt = self.routers[kr]
        nr = rt.core.next_timer()
        if nr is not None and nr < rt.timer_at:
            rt.timer_at = nr
            self.push(nr, TIMER, kr)

    def sync_tick(self, k: int, t: float) -> None:
        """Replica ``k`` publishes its row and reads the others' (fleetsim/replicas.py)."""
        syncer = self.syncer
        assert syncer is not None
        if not syncer.current(k, t):
            return  # replaced by an early exchange
        if syncer.tick(k, t):
            self.wake(k)
        if self.working():
            self.push(syncer.next_at[k], SYNC, k)

    # -- the engines -----------------------------------------------------------------

    def plan(self, i: int, eng: EngineModel, now: float) -> None:
        end = eng.plan(now)
        if end is not None:
            self.pending[i] = True
            self.push(end, STEP, i)

    def on_tokens(self, rid: int, k: int) -> None:
        if self.ev is not None:
            self.ev.append(("tokens", self.clock.now(), rid, k))
        self.routers[self.owner[rid]].tracker.on_tokens(rid, k)

    def engine_step(self, si: int, t: float) -> None:
        """Engine ``si``'s step ended: the tracker hears first tokens and every
        ``sync_tokens``-th token; finished requests are judged; the next step is planned."""
        eng = self.engines[si]
        self.pending[si] = False
        res = eng.step()
        self.steps += 1
        self.busy += res.end - res.start
        ms, idx, k_sync, synced = self.milestones[si], res.index, self.k_sync, self.synced
        for rid in cast("tuple[int, ...]", res.first_token):
            self.on_tokens(rid, 1)
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
                        self.on_tokens(rid, dd)
                        synced[rid] = g
                    ms.setdefault(idx + k_sync, []).append(rid)
        if res.finished:
            self.finished(si, eng, res, t)
        if not self.pending[si]:
            self.plan(si, eng, t)

    def finished(self, si: int, eng: EngineModel, res: StepResult, t: float) -> None:
        """Requests finished in engine ``si``'s step: the routers hear it (and re-decide
        their queues), each is judged, workflow calls waiting on it may be released."""
        ends = eng.step_ends
        woke = 0  # bit set of routers that had a finish
        for f in res.finished:
            rid = cast(int, f.rid)
            dd = f.output_tokens - self.synced.pop(rid, 0)
            if dd > 0:
                self.on_tokens(rid, dd)
            if self.ev is not None:
                self.ev.append(("finish", t, rid, Status.OK))
            kr = self.owner[rid]
            woke |= 1 << kr
            out = self.routers[kr].tracker.on_finish(rid, Status.OK)
            if out is not None:
                self.rec.dispatch_load[rid] = out.dispatch_load
            self.verdicts.record(rid, f.segments, f.first_token_step, res.end, ends)
            for w in self.waiters.pop(rid, ()):
                self.left[w] -= 1
                if not self.left[w]:
                    heapq.heappush(self.released, (t, w))
        if self.every_decision:
            woke = (1 << self.n_rt) - 1  # every replica sees the finish at once
        for kr in range(self.n_rt):
            if woke >> kr & 1:
                self.wake(kr)
        scaling = self.scaling
        if (
            scaling is not None
            and scaling.leaving
            and not (eng.num_running or eng.num_waiting)
            and scaling.drained(self.ids[si], t)
        ):
            self.refit()

    # -- autoscaling -----------------------------------------------------------------

    def scale_tick(self, _k: int, t: float) -> None:
        scaling = self.scaling
        assert scaling is not None
        changed = scaling.tick(self.routers[0].tracker.snapshot(), self.gauges)
        for at in scaling.take_asked():
            self.push(at, SCALE_READY, 0)
        if self.working():
            self.push(t + scaling.interval_s, SCALE_TICK, 0)
        if changed:
            self.refit()
            self.wake(0)

    def server_ready(self, _k: int, t: float) -> None:
        assert self.scaling is not None
        if self.scaling.arrive(t):
            self.refit()
            self.wake(0)

    def gauges(self) -> dict[str, EngineGauges]:
        assert self.scaling is not None
        cap = self.sim.scn.profile.max_num_seqs
        out = {}
        for b in self.scaling.backends.backends:
            eng = self.engines[self.index[b.id]]
            out[b.id] = EngineGauges(eng.num_running, eng.num_waiting, eng.kv_usage, cap)
        return out

    def refit(self) -> None:
        """The fleet changed: engines for the servers that joined, then health and the
        backend set of every router (the order of the live swap, actuation/fleet.py)."""
        scaling, sim = self.scaling, self.sim
        assert scaling is not None
        for sid in scaling.take_joined():
            self.index[sid] = len(self.engines)
            self.ids.append(sid)
            seed = sim.seed * 1000 + int(sid[1:])
            self.engines.append(
                EngineModel(
                    sim.scn.profile,
                    seed=seed,
                    noise=sim.scn.noise,
                    keep_history=True,
                    scheduling=sim.scn.scheduling,
                )
            )
            self.milestones.append({})
            self.pending.append(False)
        sim.backends = scaling.backends
        for r in self.routers:
            r.tracker.health.reset(scaling.healthy)
            r.tracker.set_backends(scaling.backends)
