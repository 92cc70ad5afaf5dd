"""The scaler's rules on a real tracker with a static step model and a manual clock:
forecast, hysteresis, cooldowns, floors and ceilings, move-before-add, the fast trigger,
scale-in of idle servers, and no flapping under a noisy steady load."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from slorouter.autoscale.decision import ScaleDecision, TickResult
from slorouter.autoscale.scaler import Scaler
from slorouter.autoscale.signal import Attainment, LengthStats, RateForecast
from slorouter.clock import ManualClock
from slorouter.config.autoscale import AutoscaleConfig, TierScaleConfig
from slorouter.models.fluid import Lengths, tier_cost
from slorouter.models.static import EngineLimits, LinearStep, StaticLatency, StaticLengths
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Slo, SloClass, Status, Tier

STEP = LinearStep(c0_s=0.010, c_batch_s=1e-4, c_kv_s=0.0, c_prefill_s=0.0)
LIM = EngineLimits(max_num_seqs=256, kv_capacity_tokens=10_000_000, max_batched_tokens=4096)
T20 = Tier("t20", Slo(SloClass.LATENCY, 1.0, 0.020), rank=0)
T50 = Tier("t50", Slo(SloClass.LATENCY, 1.0, 0.050), rank=1)
TIERS = (T20, T50)
# with nothing observed: prompt 1024 (PRIOR_PROMPT_TOKENS), output 256 (default_output_tokens)
PRIOR = Lengths(1024.0, 256.0, 1024.0 + 128.0)
COST20 = tier_cost(STEP, LIM, 0.020, PRIOR)[2]
COST50 = tier_cost(STEP, LIM, 0.050, PRIOR)[2]


def poisson(rng: random.Random, lam: float) -> int:
    n, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return n
        n += 1


@dataclass
class Rig:
    """A tracker over ``bins`` (server -> tier) and a scaler acting in webhook mode:
    moves and releases are applied at once, asked-for servers register after ``delay``."""

    bins: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0
    busy: set[str] = field(default_factory=set)  # servers holding a long request

    def __post_init__(self) -> None:
        self.clock = ManualClock()
        cfg = AutoscaleConfig(
            enabled=True,
            **{
                "interval_s": 1.0,
                "provisioning_delay_s": 0.0,
                "rate_half_life_s": 5.0,
                "trend_half_life_s": 20.0,
                "scale_out_cooldown_s": 0.0,
                "scale_in_cooldown_s": 0.0,
                "idle_s": 10.0,
                **self.settings,
            },
        )
        self.cfg = cfg
        self.set = BackendSet([Backend(b, f"http://{b}", tier=t) for b, t in self.bins.items()], TIERS)
        self.tracker = Tracker(
            self.clock, self.set, Health(self.bins), StaticLatency(STEP, limits=LIM), StaticLengths(256)
        )
        self.scaler = Scaler(cfg, TIERS)
        self.tracker.add_listener(self.scaler.observe_outcome)
        self.rid = 0
        self.pending: list[tuple[float, str]] = []
        self.decisions: list[ScaleDecision] = []
        self.released: list[str] = []
        self.moved: dict[str, str] = {}
        self.made = 0
        for b in self.busy:
            self.hold(b)

    def req(self, t: Tier) -> int:
        self.rid += 1
        info = RequestInfo(
            self.rid, t, self.clock.now(), prompt_tokens=1024, max_tokens=None, output_bound=256
        )
        self.tracker.on_arrival(info)
        return self.rid

    def hold(self, backend: str) -> None:
        """A request that stays on ``backend`` (the server is not empty)."""
        rid = self.req({t.name: t for t in TIERS}[self.set[backend].tier])
        self.tracker.on_dispatch(rid, backend)

    def arrive(self, t: Tier, n: int) -> None:
        for _ in range(n):
            self.tracker.on_finish(self.req(t), Status.OK)

    def swap(self, backends: list[Backend]) -> None:
        self.set = BackendSet(backends, TIERS)
        self.tracker.health.reset(b.id for b in backends)
        self.tracker.set_backends(self.set)

    def tick(self) -> TickResult:
        now = self.clock.now()
        ready = [(at, t) for at, t in self.pending if at <= now]
        self.pending = [(at, t) for at, t in self.pending if at > now]
        if ready:
            extra = []
            for _, t in ready:
                self.made += 1
                extra.append(Backend(f"new{self.made}", f"http://new{self.made}", tier=t))
            self.swap([*self.set.backends, *extra])
        r = self.scaler.tick(self.tracker.snapshot())
        if r.move:
            self.moved.update(r.move)
            self.swap(list(self.set.with_tiers(r.move).backends))
        if r.release:
            self.released += r.release
            self.swap([b for b in self.set.backends if b.id not in r.release])
        for d in r.decisions:
            self.pending += [(now + self.delay, d.tier)] * d.add
        self.decisions += r.decisions
        return r

    def run(self, rates: dict[Tier, float], seconds: float, rng: random.Random | None = None) -> None:
        for _ in range(round(seconds)):
            self.clock.advance(1.0)
            for t, lam in rates.items():
                self.arrive(t, poisson(rng, lam) if rng else round(lam))
            self.tick()

    def count(self, tier: str) -> int:
        return len(self.set.in_tier(tier))

    def desired(self, tier: str) -> int:
        d = self.scaler.tiers[tier].desired
        assert d is not None
        return d


def need(rate: float, cost: float, util: float = 0.85) -> int:
    return max(1, math.ceil(rate * cost / util - 1e-9))


# -- the signal --------------------------------------------------------------------------------


def test_rate_level_follows_a_constant_rate_and_the_forecast_a_ramp() -> None:
    f = RateForecast(level_half_life_s=10.0, trend_half_life_s=30.0)
    f.update(0, 0.0)
    for s in range(1, 121):
        f.update(20, float(s))
    assert f.level == pytest.approx(20.0) and abs(f.trend) < 1e-9
    assert f.sizing_rate(120.0, 120.0) == pytest.approx(20.0)
    ramp = RateForecast(level_half_life_s=10.0, trend_half_life_s=30.0)
    ramp.update(0, 0.0)
    for s in range(1, 301):  # rate = 10 + 0.1 * t req/s, counted each second
        ramp.update(round(10 + 0.1 * s), float(s))
    now_rate = 10 + 0.1 * 300
    # Holt's level keeps up with a linear ramp (its prediction includes the trend); the
    # forecast 60 s ahead is near the rate at t + 60
    assert ramp.level == pytest.approx(now_rate, rel=0.03)
    assert ramp.trend == pytest.approx(0.1, rel=0.2)
    assert ramp.forecast(60.0, 300.0) == pytest.approx(now_rate + 6.0, rel=0.06)
    falling = RateForecast(level_half_life_s=10.0, trend_half_life_s=30.0)
    falling.update(0, 0.0)
    for s in range(1, 301):
        falling.update(max(0, round(50 - 0.1 * s)), float(s))
    assert falling.forecast(120.0, 300.0) < falling.level == falling.sizing_rate(120.0, 300.0)


def test_rate_starts_as_the_mean_since_start_and_ignores_the_trend_while_cold() -> None:
    f = RateForecast(level_half_life_s=30.0, trend_half_life_s=120.0)
    f.start(0.0)
    f.update(40, 0.2)  # a burst right at the start ...
    assert f.level == pytest.approx(200.0)
    f.update(0, 2.0)  # ... is a mean over the time since the start, not a rate kept for minutes
    assert f.level == pytest.approx(20.0)
    for s in range(2, 60):
        f.update(40 + 4 * s, 2.0 * s)  # rising fast: the trend is learned after 30 s
    assert f.trend > 0 and f.forecast(120.0, 118.0) == f.level  # not used before 30 + 120 s


def test_length_stats_blend_the_prior_then_follow_the_observations() -> None:
    ls = LengthStats(prior_weight=8.0)
    assert ls.lengths(1000.0, 200.0, 0.0) == Lengths(1000.0, 200.0, 1100.0)
    for _ in range(800):
        ls.observe(100, 50, 1.0)
    got = ls.lengths(1000.0, 200.0, 1.0)
    # eight requests' worth of prior: (800 * 100 + 8 * 1000) / 808 ...
    assert got.mean_prompt == pytest.approx(88_000 / 808) and got.mean_output == pytest.approx(41_600 / 808)
    # x = E[n (p + n/2)] / E[n]: 125 for the observed requests, 1100 for the prior, by output tokens
    assert got.mean_context == pytest.approx((800 * 50 * 125 + 8 * 200 * 1100) / (800 * 50 + 8 * 200))
    for _ in range(80_000):
        ls.observe(100, 50, 2.0)
    assert ls.lengths(1000.0, 200.0, 2.0).mean_context == pytest.approx(125.0, rel=0.01)


def test_attainment_is_over_the_window_only() -> None:
    a = Attainment(window_s=60.0)
    for i in range(10):
        a.observe(False, float(i))
    assert a.value(10.0) == 0.0
    for i in range(90, 100):
        a.observe(True, float(i))
    assert a.value(100.0) == 1.0 and a.finished(100.0) == 10
    assert a.value(500.0) is None


# -- sizing and forecast ------------------------------------------------------------------------


def test_need_is_rate_times_fluid_cost_over_target_utilisation() -> None:
    rig = Rig({"a": "t20", "b": "t50"}, busy={"a", "b"})
    rig.run({T20: 60.0, T50: 40.0}, 60)
    s20, s50 = rig.scaler.tiers["t20"], rig.scaler.tiers["t50"]
    assert s20.cost_s == pytest.approx(COST20) and s50.cost_s == pytest.approx(COST50)
    assert s20.need == need(60.0, COST20) > 1 and s50.need == need(40.0, COST50)
    assert rig.desired("t20") == s20.need and rig.count("t20") == s20.need  # asked for, registered
    d = next(d for d in rig.decisions if d.tier == "t20")
    assert d.add == s20.need - 1 and d.current == 1 and d.remove == ()
    assert "req/s" in d.reason and d.decision_id.startswith("d-")


def test_a_rising_rate_is_met_one_provisioning_delay_ahead() -> None:
    def final_desired(delay: float) -> int:
        rig = Rig({"a": "t20"}, {"provisioning_delay_s": delay}, busy={"a"})
        for s in range(240):  # 10 -> 129.5 req/s
            rig.clock.advance(1.0)
            rig.arrive(T20, round(10 + 0.5 * s))
            rig.tick()
        return rig.desired("t20")

    now_need = need(129.5, COST20)
    ahead = need(129.5 + 0.5 * 120.0, COST20)
    assert (now_need, ahead) == (8, 12)
    assert final_desired(0.0) in (now_need, now_need + 1)
    assert final_desired(120.0) in (ahead - 1, ahead, ahead + 1)


# -- hysteresis, cooldowns, flapping ------------------------------------------------------------


def test_a_load_inside_the_hysteresis_band_changes_nothing() -> None:
    servers = 4
    rate_top = servers * 0.85 / COST20  # need = 4 up to here
    rig = Rig({f"s{i}": "t20" for i in range(servers)}, {"idle_s": 1.0})
    rig.run({T20: rate_top * 0.9}, 60)
    assert rig.scaler.tiers["t20"].need == servers
    assert rig.decisions == [] and rig.count("t20") == servers  # nothing to do
    # a drop that would need only 3 at 85 % but 4 at 65 %: kept (no release, empty or not)
    lower = 2.4 / COST20
    assert need(lower, COST20) == 3 and need(lower, COST20, 0.65) == servers
    rig.run({T20: lower}, 120)
    assert rig.released == [] and rig.count("t20") == servers


def test_scale_out_cooldown_spaces_increases_and_scale_in_cooldown_blocks_release() -> None:
    rig = Rig(
        {"a": "t20"},
        {"scale_out_cooldown_s": 30.0, "scale_in_cooldown_s": 100.0, "idle_s": 5.0},
        busy={"a"},
    )
    rig.run({T20: 30.0}, 3)
    first = [d for d in rig.decisions if d.desired > d.current or d.add]
    assert len(first) == 1
    t_first = first[0].at
    rig.run({T20: 120.0}, 40)  # much more load at once: the next increase waits out the cooldown
    ups = [d for d in rig.decisions if d.add]
    assert len(ups) >= 2 and ups[1].at - t_first >= 30.0
    rig.run({T20: 0.0}, 60)  # load gone: every added server empty, but the tier grew recently
    assert rig.released == []
    last_up = max(d.at for d in rig.decisions if d.add)
    rig.run({T20: 0.0}, 60)
    assert rig.released and min(d.at for d in rig.decisions if d.remove) - last_up >= 100.0
    assert rig.count("t20") == 1  # the busy one stays (and the floor of one server)


def test_noisy_steady_load_never_flaps() -> None:
    """Mid-band loads (need 3 and 2 at 85 %), Poisson arrivals, the default half-lives and
    a 120 s forecast horizon: after the first ask, twenty minutes without a decision."""
    settings = {"rate_half_life_s": 30.0, "trend_half_life_s": 120.0, "provisioning_delay_s": 120.0}
    rig = Rig(
        {"a": "t20", "b": "t50"}, {**settings, "idle_s": 5.0, "scale_in_cooldown_s": 30.0}, busy={"a", "b"}
    )
    rng = random.Random(7)
    rig.run({T20: 2.5 * 0.85 / COST20, T50: 1.5 * 0.85 / COST50}, 1200, rng)
    assert rig.count("t20") == 3 and rig.count("t50") == 2
    settle = [d for d in rig.decisions if d.at > 240]
    assert settle == [], [(d.tier, d.desired, d.reason) for d in settle]
    assert not any(d.remove for d in rig.decisions)


# -- floors and ceilings ------------------------------------------------------------------------


def test_floor_and_ceiling_per_tier_and_in_total() -> None:
    settings = {
        "tiers": {
            "t20": TierScaleConfig(min_servers=2, max_servers=3),
            "t50": TierScaleConfig(min_servers=1),
        },
        "max_backends": 5,
        "idle_s": 1.0,
    }
    rig = Rig({"a": "t20"}, settings, busy={"a"})
    rig.run({}, 2)
    assert rig.desired("t20") == 2 and rig.desired("t50") == 1  # floors, without any traffic
    rig.run({T20: 500.0, T50: 500.0}, 20)
    assert rig.desired("t20") == 3  # the tier's ceiling
    assert rig.desired("t20") + rig.desired("t50") == 5 == len(rig.set)  # the total ceiling
    rig.run({}, 200)  # idle: released down to the floors, never below
    assert rig.count("t20") == 2 and rig.count("t50") == 1


def test_desired_never_sums_below_min_backends_even_unapplied() -> None:
    """Advisory: releases are proposed, never applied; the desired counts (what KEDA
    would follow) still add up to min_backends."""
    rig = Rig({"a": "t20", "b": "t50"}, {"min_backends": 1, "idle_s": 2.0})
    for _ in range(30):
        rig.clock.advance(1.0)
        r = rig.scaler.tick(rig.tracker.snapshot())
        assert len(r.release) <= 1
        assert sum(st.desired or 0 for st in rig.scaler.tiers.values()) >= 1


def test_min_backends_in_total_is_never_crossed_by_releases() -> None:
    rig = Rig({f"s{i}": "t50" for i in range(4)}, {"min_backends": 3, "idle_s": 2.0})
    rig.run({}, 30)
    assert len(rig.released) == 1 and len(rig.set) == 3


# -- move before add; the fast trigger ----------------------------------------------------------


def test_an_empty_server_moves_to_a_short_tier_before_one_is_asked_for() -> None:
    rig = Rig({"a": "t20", "x": "t50", "y": "t50", "z": "t50"}, busy={"a", "x"})
    rig.run({T20: 2.5 * 0.85 / COST20}, 5)  # t20 needs 3; t50 needs 1 (its busy one)
    assert rig.scaler.tiers["t20"].need == 3
    assert set(rig.moved) == {"y", "z"} and set(rig.moved.values()) == {"t20"}
    assert not any(d.add for d in rig.decisions) and rig.made == 0
    into = next(d for d in rig.decisions if d.tier == "t20")
    assert "moved in" in into.reason and into.current == 3


def test_a_server_that_moved_is_not_moved_back_within_the_cooldown() -> None:
    rig = Rig(
        {"a": "t20", "x": "t50", "y": "t50"}, {"scale_in_cooldown_s": 60.0, "idle_s": 1000.0}, busy={"a", "x"}
    )
    rig.run({T20: 1.6 / COST20}, 5)  # t20 short by one: y moves in
    assert rig.moved == {"y": "t20"}
    rig.run({T50: 2.5 / COST50}, 20)  # now t50 is short, t20 has an empty server
    assert rig.moved == {"y": "t20"}  # not back: pinned, and t20 is in its cooldown
    assert any(d.tier == "t50" and d.add for d in rig.decisions)


def test_the_fast_trigger_asks_for_one_more_server_once_per_shortage() -> None:
    rig = Rig({"a": "t20"}, {"trigger_window_s": 10.0}, delay=5.0, busy={"a"})
    rig.run({T20: 1.0}, 10)  # a trickle: one server is plenty by the rate
    assert rig.decisions == []
    rig.scaler.on_defer("t20", rig.clock.now())  # a deferral that a finish resolved at once ...
    rig.run({T20: 1.0}, 1)
    assert rig.decisions == []  # ... nothing of the tier waits at the tick: not a shortage
    rig.req(T20)  # an on-time request fit nowhere and still waits in the router
    rig.scaler.on_defer("t20", rig.clock.now())
    rig.run({T20: 1.0}, 1)
    assert [(d.desired, d.add) for d in rig.decisions] == [(2, 1)]
    assert "fit on no server" in rig.decisions[0].reason
    for _ in range(4):  # still deferring while the server is on its way: no second ask
        rig.scaler.on_defer("t20", rig.clock.now())
        rig.run({T20: 1.0}, 1)
    assert len(rig.decisions) == 1
    rig.run({T20: 1.0}, 3)  # it registered; the deferrals before that ask for nothing more
    assert rig.count("t20") == 2 and len(rig.decisions) == 1


def test_idle_servers_are_released_only_after_idle_s_and_named_in_the_decision() -> None:
    rig = Rig({"a": "t20", "b": "t20", "c": "t20"}, {"idle_s": 30.0}, busy={"a"})
    rig.run({T20: 1.0}, 25)
    assert rig.released == []
    rig.run({T20: 1.0}, 10)
    assert sorted(rig.released) == ["b", "c"]
    d = next(d for d in rig.decisions if d.remove)
    assert d.tier == "t20" and sorted(d.remove) == ["b", "c"] and d.desired == d.current == 1
    assert "released" in d.reason


def test_advisory_repetition_emits_one_decision() -> None:
    """Without acting (advisory), the same proposal is not emitted again every tick."""
    rig = Rig({"a": "t20", "b": "t20"}, {"idle_s": 2.0}, busy={"a"})
    results = []
    for _ in range(20):
        rig.clock.advance(1.0)
        results.append(rig.scaler.tick(rig.tracker.snapshot()))  # never applied
    proposals = [d for r in results for d in r.decisions]
    assert len(proposals) == 1 and proposals[0].remove == ("b",)
    assert all(r.release == ("b",) for r in results[3:])
