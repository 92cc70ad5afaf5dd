"""The autoscalers users run today, as pure rules over one pool of servers — the baselines
the fleet simulator compares the per-tier scaler with (``scripts/bench_autoscale.py``).
None of them knows tiers: they read engine gauges (what vLLM exports to Prometheus) and
size one pool. Each returns a :class:`~slorouter.autoscale.decision.TickResult`
(one decision for the pool), so a driver acts on all of them the same way.

* :class:`KedaQueue` — KEDA's Prometheus trigger on ``vllm:num_requests_waiting`` with
  ``AverageValue`` 5 (production-stack's ScaledObject), as the HPA applies it:
  ``desired = ceil(Σ waiting / 5)`` (no change within the HPA's 10 % tolerance), scale-up
  at most ``max(2 × current, current + 4)`` per period, scale-down stabilised over 300 s
  (the highest desired count of the window wins), 1 to ``max_servers``.
* :class:`Utilisation` — a threshold rule on the running batch: with ``u = Σ running /
  (servers · max_num_seqs)``, above 80 % the pool is sized to 80 %, below 30 % to 30 %
  (the smallest count that leaves the band), scale-down stabilised over 300 s.
* :class:`WvaSpare` — llm-d's workload-variant-autoscaler, saturation mode: a server is
  saturated at KV ≥ 80 % or queue ≥ 5 (peaks over the last 60 s); one more server when
  no server is unsaturated or the unsaturated ones' mean spare KV < 10 % or mean spare
  queue < 3; one fewer when the load of the unsaturated ones spread over one server fewer
  still leaves those spares (and at least two are unsaturated); nothing while an asked-for
  server is not ready. It runs every 30 s; the others every 15 s (the HPA's sync period).

**Waiting** is what has arrived and does not run yet: the engine's own queue plus, spread
evenly over the servers, the router's queue (``least-request`` never queues in the router;
``slo-pack`` defers there instead of overfilling an engine — either way it is the backlog
these autoscalers are meant to see).

Scale-in drains the least loaded servers (empty ones first): a Kubernetes scale-down picks
pods by its own order, this is the kindest choice for the baselines.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from slorouter.autoscale.decision import ScaleDecision, TickResult
from slorouter.autoscale.plan import ScalePlan
from slorouter.state.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class EngineGauges:
    """One server's engine metrics (vLLM's names in the comments)."""

    running: int  # vllm:num_requests_running
    waiting: int  # vllm:num_requests_waiting
    kv_usage: float  # vllm:kv_cache_usage_perc, 0..1
    max_running: int  # the engine's max_num_seqs


@dataclass(frozen=True, slots=True)
class PoolLimits:
    interval_s: float = 15.0  # how often the rule runs (the HPA's sync period)
    min_servers: int = 1
    max_servers: int = 64
    stabilise_down_s: float = 300.0  # scale-in takes the highest desired count of this window


class PoolScaler:
    """What the three rules share: the pool, its desired count, the scale-down
    stabilisation window, picking the servers to drain, the decision."""

    name = "pool"
    default_interval_s = 15.0  # the HPA's sync period

    def __init__(self, limits: PoolLimits, pool_tier: str, id_prefix: str = "b") -> None:
        self.limits = limits
        self.interval_s = limits.interval_s
        self.pool_tier = pool_tier
        self.id_prefix = id_prefix
        self.desired: int | None = None
        self._recent: deque[tuple[float, int]] = deque()  # (time, raw desired)
        self._seq = 0
        self.counts: dict[str, int] = {}

    def raw(self, snap: Snapshot, ready: list[str], gauges: Mapping[str, EngineGauges], pending: int) -> int:
        """The rule's desired count now, before the limits and the stabilisation."""
        raise NotImplementedError

    def tick(
        self, snap: Snapshot, leaving: Collection[str], gauges: Mapping[str, EngineGauges]
    ) -> TickResult:
        now = snap.now
        lim = self.limits
        ready = [b.id for b in snap.backends.backends if b.id not in leaving]
        cur = len(ready)
        old = cur if self.desired is None else self.desired
        pending = max(0, old - cur)
        raw = min(lim.max_servers, max(lim.min_servers, self.raw(snap, ready, gauges, pending)))
        if self.desired is None:  # the starting fleet counts as asked for at the previous period
            self._recent.append((now - lim.interval_s, cur))
        self._recent.append((now, raw))
        while self._recent and self._recent[0][0] < now - lim.stabilise_down_s:
            self._recent.popleft()
        want = raw
        if want < old:  # scale-down: the highest count asked for within the window
            want = min(old, max(r for _, r in self._recent))
        release: list[str] = []
        if want < cur:
            running = [snap.loads[b].running if b in snap.loads else 0 for b in ready]
            order = sorted(range(cur), key=lambda i: (running[i], i))  # emptiest first, then config order
            release = [ready[i] for i in order[: cur - want]]
        self.desired = want
        if want == old and not release:
            return TickResult(self._plan(cur, want), {}, (), ())
        kind = "out" if want > old else "in"
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._seq += 1
        after = cur - len(release)
        d = ScaleDecision(
            self.pool_tier,
            after,
            want,
            max(0, want - max(old, cur)),
            tuple(release),
            f"{self.name}: {old} -> {want} (rule {raw})",
            f"{self.id_prefix}-{self._seq}",
            now,
        )
        plan = self._plan(cur, want, tuple(release))
        return TickResult(plan, {}, tuple(release), (d,))

    def _plan(self, cur: int, want: int, release: tuple[str, ...] = ()) -> ScalePlan:
        t = self.pool_tier
        return ScalePlan(
            {t: want},
            {t: want},
            {t: cur},
            add={t: want - cur} if want > cur else {},
            release=release,
            released_from={b: t for b in release},
        )


def _waiting(snap: Snapshot, ready: list[str], gauges: Mapping[str, EngineGauges]) -> dict[str, float]:
    """Per server: the engine's queue plus its share of the router's queue."""
    routed = sum(snap.queued.values())
    share = routed / len(ready) if ready else 0.0
    return {b: (gauges[b].waiting if b in gauges else 0) + share for b in ready}


@dataclass(frozen=True, slots=True)
class KedaParams:
    target_waiting: float = 5.0  # AverageValue per server
    tolerance: float = 0.1  # the HPA's: no change while metric / target is within 1 ± this


class KedaQueue(PoolScaler):
    name = "keda-queue"

    def __init__(self, limits: PoolLimits, pool_tier: str, params: KedaParams | None = None) -> None:
        super().__init__(limits, pool_tier, "keda")
        self.p = params or KedaParams()

    def raw(self, snap: Snapshot, ready: list[str], gauges: Mapping[str, EngineGauges], pending: int) -> int:
        cur = len(ready) + pending
        total = sum(_waiting(snap, ready, gauges).values())
        if cur and abs(total / (cur * self.p.target_waiting) - 1.0) <= self.p.tolerance:
            return cur
        want = math.ceil(total / self.p.target_waiting - 1e-9)
        return min(want, max(2 * cur, cur + 4))  # the HPA's default scale-up policies


@dataclass(frozen=True, slots=True)
class UtilisationParams:
    out_above: float = 0.80  # share of max_num_seqs running, on average
    in_below: float = 0.30


class Utilisation(PoolScaler):
    name = "utilisation"

    def __init__(self, limits: PoolLimits, pool_tier: str, params: UtilisationParams | None = None) -> None:
        super().__init__(limits, pool_tier, "util")
        self.p = params or UtilisationParams()

    def raw(self, snap: Snapshot, ready: list[str], gauges: Mapping[str, EngineGauges], pending: int) -> int:
        cur = len(ready) + pending
        if not ready:
            return cur
        running = sum(gauges[b].running for b in ready if b in gauges)
        batch = max(1, max((gauges[b].max_running for b in ready if b in gauges), default=1))
        u = running / (len(ready) * batch)
        if u > self.p.out_above:
            return max(cur, math.ceil(running / (self.p.out_above * batch) - 1e-9))
        if u < self.p.in_below:
            return min(cur, max(1, math.ceil(running / (self.p.in_below * batch) - 1e-9)))
        return cur


@dataclass(frozen=True, slots=True)
class WvaParams:
    kv_threshold: float = 0.80  # kvCacheThreshold
    queue_threshold: float = 5.0  # queueLengthThreshold
    kv_spare_trigger: float = 0.10  # kvSpareTrigger
    queue_spare_trigger: float = 3.0  # queueSpareTrigger
    peak_window_s: float = 60.0  # the gauges are max_over_time over this window


class WvaSpare(PoolScaler):
    name = "wva-spare"
    default_interval_s = 30.0  # a reconcile every 30 s (its gauges: peaks over 60 s)

    def __init__(self, limits: PoolLimits, pool_tier: str, params: WvaParams | None = None) -> None:
        super().__init__(limits, pool_tier, "wva")
        self.p = params or WvaParams()
        self._seen: deque[tuple[float, dict[str, tuple[float, float]]]] = deque()

    def _peaks(self, now: float, cur: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        self._seen.append((now, cur))
        while self._seen and self._seen[0][0] < now - self.p.peak_window_s:
            self._seen.popleft()
        out: dict[str, tuple[float, float]] = {}
        for _, sample in self._seen:
            for b, (kv, q) in sample.items():
                if b in cur:
                    pk, pq = out.get(b, (0.0, 0.0))
                    out[b] = (max(pk, kv), max(pq, q))
        return out

    def raw(self, snap: Snapshot, ready: list[str], gauges: Mapping[str, EngineGauges], pending: int) -> int:
        p = self.p
        waiting = _waiting(snap, ready, gauges)
        now_vals = {b: (gauges[b].kv_usage if b in gauges else 0.0, waiting[b]) for b in ready}
        peaks = self._peaks(snap.now, now_vals)
        cur = len(ready)
        if pending:  # an asked-for server is not ready: hold (no cascade)
            return cur + pending
        free = [(kv, q) for kv, q in peaks.values() if kv < p.kv_threshold and q < p.queue_threshold]
        n = len(free)
        if n == 0:
            return cur + 1
        spare_kv = sum(p.kv_threshold - kv for kv, _ in free) / n
        spare_q = sum(p.queue_threshold - q for _, q in free) / n
        if spare_kv < p.kv_spare_trigger or spare_q < p.queue_spare_trigger:
            return cur + 1
        if n >= 2:
            kv_after = sum(kv for kv, _ in free) / (n - 1)
            q_after = sum(q for _, q in free) / (n - 1)
            if p.kv_threshold - kv_after >= p.kv_spare_trigger and p.queue_threshold - q_after >= (
                p.queue_spare_trigger
            ):
                return cur - 1
        return cur


BASELINES: dict[str, type[PoolScaler]] = {
    "keda-queue": KedaQueue,
    "utilisation": Utilisation,
    "wva-spare": WvaSpare,
}
