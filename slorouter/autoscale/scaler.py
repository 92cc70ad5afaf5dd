"""The scaler: per-tier scaling decisions from the router's own view (pure: no I/O, the
time is the snapshot's). The same object runs in the live router (a background task
ticks it and acts on its output, :mod:`slorouter.actuation`) and in the fleet simulator.

Feed it three things:

* ``observe_outcome(outcome)`` — a tracker listener: every finished request (lengths,
  attainment, and the count that turns in-system requests into arrivals);
* ``on_defer(tier, now)`` — the router's policy deferred an **on-time** request of
  ``tier``: it fits on no server of its tier or a tighter one (the fast trigger);
* ``tick(snapshot)`` every ``interval_s`` — returns the moves, releases and per-tier
  decisions (:class:`~slorouter.autoscale.decision.TickResult`).

Per tier, at each tick (docs/autoscaling.md has the reasoning and the defaults):

1. **arrivals** since the last tick = (finished + in the system now) − the same last tick
   (in the system: queued in the router + resident on any server, from the snapshot);
   they feed the rate's level and trend (:class:`~slorouter.autoscale.signal.RateForecast`);
   the tier is sized for ``λ = max(level, level + trend · provisioning_delay_s)``.
2. **cost** = the fluid server-seconds per request at the tier's TPOT
   (:func:`slorouter.models.fluid.tier_cost`) with the latency model's pace coefficients
   of a server of the tier (their ``c_batch`` already carries the typical prefill
   interference: the fluid step's own prefill term is left out) and the tier's observed
   lengths; deadline tiers use ``deadline / mean output`` as their pace, best effort the
   engine's largest batch.
3. **need** = ``ceil(λ · cost / target_utilization)``; **keep** = the same at
   ``scale_in_utilization`` (≥ need: the hysteresis band). **Fast trigger**: an on-time
   request of the tier deferred within ``trigger_window_s`` (and after the tier last
   grew), with requests of the tier still queued at the tick, makes need at least
   current + 1. Floors and ceilings per tier apply.
4. :func:`~slorouter.autoscale.plan.plan`: empty servers move from tiers above their keep
   to short tiers first; what is still short is asked for; servers empty for ``idle_s``
   beyond keep are released (never below ``min_backends``).
5. **desired** per tier rises to need at once, then at most once per
   ``scale_out_cooldown_s``; a tier that grew (or received a moved server) gives nothing
   up for ``scale_in_cooldown_s``; asks beyond keep are withdrawn after that;
   ``max_backends`` caps the sum (loose tiers are cut first). A decision is emitted when
   desired changes or servers move or go; asks still unmet after ``reask_after_s`` are
   repeated.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from slorouter.autoscale.decision import ScaleDecision, TickResult
from slorouter.autoscale.plan import ScalePlan, TierTarget, plan, servers_needed
from slorouter.autoscale.signal import Attainment, LengthStats, RateForecast
from slorouter.config.autoscale import AutoscaleConfig
from slorouter.models.fluid import Lengths, tier_cost
from slorouter.state.snapshot import Snapshot
from slorouter.values import Outcome, SloClass, Status, Tier

PRIOR_PROMPT_TOKENS: Final = 1024  # mean prompt assumed before any request was seen


@dataclass(slots=True)
class TierState:
    """What the scaler knows of one tier (also what the gauges show)."""

    tier: Tier
    rate: RateForecast
    lengths: LengthStats
    attainment: Attainment
    finished: int = 0  # requests of the tier finished so far
    counted: int = 0  # arrivals counted so far (finished + in the system at the last tick)
    deferrals: int = 0  # on-time requests that fit nowhere, in all
    last_defer: float = -math.inf
    grew_at: float = -math.inf  # when the tier's server count last grew
    last_up: float = -math.inf  # when desired last rose (or a server moved in)
    asked_at: float | None = None  # when the unmet asks were (re)sent
    desired: int | None = None
    current: int = 0
    queued: int = 0
    in_system: int = 0
    sizing_rate: float = 0.0
    cost_s: float = 0.0
    need: int = 0
    need_load: int = 0  # of need: what the load asks for (before the trigger and the floor)
    keep: int = 0
    trigger: bool = False
    headroom: float = 0.0  # spare servers at the target utilisation (negative: short)
    emitted: tuple[int, tuple[str, ...], frozenset[str]] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # decisions by kind


class Scaler:
    def __init__(
        self,
        cfg: AutoscaleConfig,
        tiers: Sequence[Tier],
        *,
        default_output_tokens: int = 256,
        id_prefix: str = "d",
        start: float | None = None,
    ) -> None:
        """``start``: the clock's time now (arrivals are counted from then; without it,
        from the first tick)."""
        self.cfg = cfg
        self.order = [t.name for t in sorted(tiers, key=lambda t: t.rank)]
        self.tiers: dict[str, TierState] = {
            t.name: TierState(
                t,
                RateForecast(cfg.rate_half_life_s, cfg.trend_half_life_s),
                LengthStats(),
                Attainment(cfg.attainment_window_s),
            )
            for t in tiers
        }
        if start is not None:
            for st in self.tiers.values():
                st.rate.start(start)
        self.prior_output = float(default_output_tokens)
        self.id_prefix = id_prefix
        self._seq = 0
        self._empty_since: dict[str, float] = {}
        self._moved_at: dict[str, float] = {}
        self.ticks = 0

    # -- inputs ----------------------------------------------------------------------

    def observe_outcome(self, o: Outcome) -> None:
        st = self.tiers.get(o.tier)
        if st is None:
            return
        st.finished += 1
        if o.status is Status.OK:
            st.lengths.observe(o.prompt_tokens, o.output_tokens, o.finished_at)
        st.attainment.observe(met_slo(st.tier, o), o.finished_at)

    def on_defer(self, tier: str, now: float) -> None:
        """An on-time request of ``tier`` fits on no server of its tier or a tighter one."""
        st = self.tiers.get(tier)
        if st is not None:
            st.deferrals += 1
            st.last_defer = max(st.last_defer, now)

    # -- the decision ----------------------------------------------------------------

    def tick(self, snap: Snapshot, leaving: Collection[str] = ()) -> TickResult:
        """Decide (see the module docs). ``leaving``: servers being drained for removal
        (not counted, neither moved nor released again)."""
        now = snap.now
        cfg = self.cfg
        self.ticks += 1
        bins = {t: [b.id for b in snap.backends.in_tier(t) if b.id not in leaving] for t in self.order}
        self._track_empty(snap, leaving, now)
        in_system = self._in_system(snap)
        empty_for = {bid: now - since for bid, since in self._empty_since.items()}
        targets: dict[str, TierTarget] = {}
        for name in self.order:
            st = self.tiers[name]
            cur = len(bins[name])
            if cur > st.current:
                st.grew_at = now
            st.current = cur
            st.in_system = in_system.get(name, 0)
            st.queued = snap.queued.get(name, 0)
            counted = st.finished + st.in_system
            st.rate.update(max(0, counted - st.counted), now)
            st.counted = max(st.counted, counted)
            targets[name] = self._target(st, snap, bins, now)
        donors = [t for t in self.order if now - self.tiers[t].last_up >= cfg.scale_in_cooldown_s]
        pinned = [b for b, at in self._moved_at.items() if now - at < cfg.scale_in_cooldown_s]
        p = plan(
            bins,
            empty_for,
            targets,
            order=self.order,
            idle_s=cfg.idle_s,
            min_total=cfg.min_backends,
            donors=donors,
            pinned=pinned,
        )
        for bid, tier in p.move.items():
            self._moved_at[bid] = now
            self.tiers[tier].last_up = now
        decisions = self._decide(p, set(donors), now)
        return TickResult(p, dict(p.move), p.release, tuple(decisions))

    def _target(self, st: TierState, snap: Snapshot, bins: Mapping[str, list[str]], now: float) -> TierTarget:
        cfg = self.cfg
        st.cost_s = self._cost(st, snap, bins, now)
        st.sizing_rate = st.rate.sizing_rate(cfg.provisioning_delay_s, now)
        busy = st.in_system > 0
        need = st.need_load = servers_needed(st.sizing_rate, st.cost_s, cfg.target_utilization, busy=busy)
        keep = servers_needed(st.sizing_rate, st.cost_s, cfg.scale_in_utilization, busy=busy)
        # a deferral counts while the tier still has requests waiting in the router: one
        # that a finish resolved at once says nothing about the fleet being short
        deferred = st.last_defer >= now - cfg.trigger_window_s and st.last_defer > st.grew_at
        st.trigger = deferred and st.queued > 0
        if st.trigger:
            need = max(need, st.current + 1)
        keep = max(keep, need)
        lim = cfg.limits(st.tier.name)
        hi = lim.max_servers if lim.max_servers is not None else math.inf
        st.need = int(min(max(need, lim.min_servers), hi))
        st.keep = int(min(max(keep, lim.min_servers), hi))
        load = 0.0 if math.isinf(st.cost_s) else st.sizing_rate * st.cost_s / cfg.target_utilization
        st.headroom = st.current - load
        return TierTarget(st.need, st.keep)

    def _cost(self, st: TierState, snap: Snapshot, bins: Mapping[str, list[str]], now: float) -> float:
        """Server-seconds per request of the tier (the previous value without servers)."""
        ref = next(iter(bins[st.tier.name]), None)
        if ref is None:
            ref = next((b.id for b in snap.backends.backends), None)
        if ref is None:
            return st.cost_s
        lat = snap.latency
        ln = st.lengths.lengths(self._prior_prompt(snap), self.prior_output, now)
        # the model's pace coefficients already carry the typical prefill interference in
        # c_batch (models/latency/backend.pace: what the policies' feasibility checks use);
        # the fluid step's own prefill term would count it twice
        coef = replace(lat.linear(ref), c_prefill_s=0.0)
        return tier_cost(coef, lat.limits(ref), _pace(st.tier, ln), ln)[2]

    @staticmethod
    def _prior_prompt(snap: Snapshot) -> float:
        running = prompt = 0
        for load in snap.loads.values():
            running += load.running
            prompt += load.prompt_tokens
        return prompt / running if running else float(PRIOR_PROMPT_TOKENS)

    def _track_empty(self, snap: Snapshot, leaving: Collection[str], now: float) -> None:
        present: set[str] = set()
        for b in snap.backends.backends:
            if b.id in leaving:
                continue
            present.add(b.id)
            load = snap.loads.get(b.id)
            if load is None or load.running == 0:
                self._empty_since.setdefault(b.id, now)
            else:
                self._empty_since.pop(b.id, None)
        for bid in [b for b in self._empty_since if b not in present]:
            del self._empty_since[bid]
        for bid in [b for b in self._moved_at if b not in present]:
            del self._moved_at[bid]

    def _in_system(self, snap: Snapshot) -> dict[str, int]:
        out = {t: n for t, n in snap.queued.items() if n}
        for load in snap.loads.values():
            for t, n in load.tier_counts.items():
                if n:
                    out[t] = out.get(t, 0) + n
        return out

    def _decide(self, p: ScalePlan, cooled: set[str], now: float) -> list[ScaleDecision]:
        cfg = self.cfg
        new: dict[str, int] = {}
        old: dict[str, int] = {}
        count: dict[str, int] = {}
        why: dict[str, list[str]] = {t: [] for t in self.order}
        for t in self.order:
            st = self.tiers[t]
            c = count[t] = p.count_after(t)
            o = old[t] = st.desired if st.desired is not None else p.have[t]
            n = o
            if st.need > max(o, c):
                if now - st.last_up >= cfg.scale_out_cooldown_s or o < c:
                    n = st.need
                    st.last_up = now
                    why[t].append(self._why_up(st, now))
                else:
                    why[t].append(f"short ({st.need} needed), in the scale-out cooldown")
            elif t in cooled and o > st.keep and o > p.have[t]:
                n = max(st.keep, c)
                why[t].append(f"servers asked for beyond the {st.keep} kept are no longer needed")
            released = [s for s, tier in p.released_from.items() if tier == t]
            if released:
                n = min(n, c)
                why[t].append(
                    f"released {', '.join(released)} (empty >= {cfg.idle_s:g} s; {st.keep} kept for "
                    f"{st.sizing_rate:.3g} req/s)"
                )
            for sid, tier in p.move.items():
                if tier == t:
                    why[t].append(f"moved in {sid} from {p.moved_from[sid]} (empty)")
                elif p.moved_from[sid] == t:
                    n = min(n, c) if n > c else n
                    why[t].append(f"moved {sid} out to {tier} (empty, above the {st.keep} kept)")
            n = max(n, min(c, st.keep))
            lim = cfg.limits(t)
            n = max(n, lim.min_servers)
            if lim.max_servers is not None:
                n = min(n, lim.max_servers)
            new[t] = n
        short = cfg.min_backends - sum(new.values())
        for t in self.order:  # the total floor: keep servers that exist, tight tiers first
            if short <= 0:
                break
            up = min(short, max(0, count[t] - new[t]))
            if up:
                new[t] += up
                short -= up
        if short > 0:
            new[self.order[0]] += short
            why[self.order[0]].append(f"min_backends ({cfg.min_backends}) in all")
        if cfg.max_backends is not None:
            excess = sum(new.values()) - cfg.max_backends
            for t in reversed(self.order):
                if excess <= 0:
                    break
                cut = min(excess, new[t] - max(old[t], count[t]))
                if cut > 0:
                    new[t] -= cut
                    excess -= cut
                    why[t].append(f"capped by max_backends ({cfg.max_backends})")
        out: list[ScaleDecision] = []
        for t in self.order:
            st = self.tiers[t]
            n, o, c = new[t], old[t], count[t]
            add = max(0, n - max(o, c))
            if n <= c:
                st.asked_at = None
            elif add > 0:
                st.asked_at = now
            elif st.asked_at is not None and now - st.asked_at >= cfg.reask_after_s:
                add = n - c
                st.asked_at = now
                why[t].append(f"{add} asked for {cfg.reask_after_s:g} s ago and not registered: asking again")
            st.desired = n
            remove = tuple(s for s, tier in p.released_from.items() if tier == t)
            moved = frozenset(s for s, tier in p.move.items() if t in (tier, p.moved_from[s]))
            sig = (n, remove, moved)
            changed = n != o or add > 0
            acted = bool(remove or moved) and (st.emitted is None or st.emitted != sig)
            if not (changed or acted):
                continue
            st.emitted = sig
            kind = "out" if n > o or add else "in" if remove or n < o else "move"
            st.counts[kind] = st.counts.get(kind, 0) + 1
            self._seq += 1
            reason = "; ".join(why[t]) or "no change"
            out.append(ScaleDecision(t, c, n, add, remove, reason, f"{self.id_prefix}-{self._seq}", now))
        return out

    def _why_up(self, st: TierState, now: float) -> str:
        cfg = self.cfg
        parts = [
            f"load {st.need_load} ({st.sizing_rate:.3g} req/s, level {st.rate.level:.3g}, forecast "
            f"{st.rate.forecast(cfg.provisioning_delay_s, now):.3g} in {cfg.provisioning_delay_s:g} s, "
            f"x {st.cost_s:.3g} server-s / {cfg.target_utilization:g})"
        ]
        if st.trigger:
            parts.append(f"on-time requests fit on no server: {st.current} + 1 (queued {st.queued})")
        lim = cfg.limits(st.tier.name)
        if st.need == lim.min_servers and st.need > max(st.need_load, st.current + st.trigger):
            parts.append(f"floor min_servers {lim.min_servers}")
        if lim.max_servers is not None and st.need == lim.max_servers:
            parts.append(f"ceiling max_servers {lim.max_servers}")
        return f"need {st.need}: " + ", ".join(parts)

    # -- views -----------------------------------------------------------------------

    def pending(self) -> dict[str, int]:
        """Servers asked for and not registered yet, per tier."""
        return {t: max(0, (st.desired or 0) - st.current) for t, st in self.tiers.items()}


def _pace(tier: Tier, ln: Lengths) -> float | None:
    """The per-token pace a tier's servers must keep (``None``: best effort)."""
    slo = tier.slo
    if slo.slo_class is SloClass.LATENCY and slo.tpot_s is not None:
        return slo.tpot_s
    if slo.slo_class in (SloClass.DEADLINE, SloClass.WORKFLOW) and slo.deadline_s is not None:
        return slo.deadline_s / ln.mean_output
    return None


def met_slo(tier: Tier, o: Outcome) -> bool:
    """Whether a finished request met its tier's SLO: every per-token deadline (latency),
    the whole response in time (deadline, workflow), or finished at all (best effort)."""
    if o.status is not Status.OK:
        return False
    slo = tier.slo
    if slo.slo_class is SloClass.LATENCY:
        return o.max_lateness_s is not None and o.max_lateness_s <= 0
    if slo.deadline_s is not None:
        return o.finished_at - o.arrival <= slo.deadline_s
    return True
