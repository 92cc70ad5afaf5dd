"""Autoscaling in the fleet simulator: time-varying arrivals (the envelope), a fleet that
grows after the provisioning delay and shrinks when the load drops, server-seconds charged
from the ask to the release, and the baseline autoscalers' rules."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from slorouter.autoscale.baselines import (
    EngineGauges,
    KedaQueue,
    PoolLimits,
    PoolScaler,
    Utilisation,
    WvaSpare,
)
from slorouter.clock import ManualClock
from slorouter.config.autoscale import AutoscaleConfig
from slorouter.fleetsim import cli as fleet_cli
from slorouter.fleetsim.envelope import Envelope, diurnal
from slorouter.fleetsim.fleet import FleetSim, SimOptions
from slorouter.fleetsim.replicas import ReplicaOptions
from slorouter.fleetsim.scaling import ScalingOptions, SimScaling, oracle_server_seconds
from slorouter.fleetsim.scenario import Scenario, ScenarioError, parse_scenario
from slorouter.fleetsim.workload import envelope_of, generate, load_trace
from slorouter.models.static import EngineLimits, LinearStep, StaticLatency, StaticLengths
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Slo, SloClass, Tier

# -- the envelope --------------------------------------------------------------------------------


def test_steps_envelope_mass_and_its_inverse() -> None:
    env = Envelope.of([0.0, 10.0, 30.0], [1.0, 3.0, 0.5])
    assert env.mass(10.0) == pytest.approx(10.0)
    assert env.mass(30.0) == pytest.approx(70.0)
    assert env.mass(40.0) == pytest.approx(75.0)  # the last piece holds
    for t in (0.0, 3.0, 10.0, 17.5, 30.0, 99.0):
        assert env.time_at(env.mass(t)) == pytest.approx(t)
    assert env.at(5.0) == 1.0 and env.at(10.0) == 3.0 and env.at(1e6) == 0.5


def test_diurnal_envelope_swings_as_asked_has_mean_one_and_repeats() -> None:
    trace = load_trace("splitwise_conv").arrived_at
    env = diurnal(trace, swing=4.0, period_s=1800.0, smooth_s=300.0)
    assert env.peak / env.trough == pytest.approx(4.0)
    assert env.mass(1800.0) == pytest.approx(1800.0)  # mean 1 over a period
    assert env.mass(5400.0) == pytest.approx(5400.0)
    assert env.at(100.0) == env.at(1900.0)
    # the trace's own shape: busier in its middle than at its start
    assert env.at(900.0) > 1.5 * env.at(0.0)
    for u in (0.0, 123.4, 1799.0, 2500.0):
        assert env.mass(env.time_at(u)) == pytest.approx(u)


def _scn(envelope: dict[str, Any] | None, **wl: Any) -> Scenario:
    raw: dict[str, Any] = {
        "name": "step",
        "seed": 3,
        "engine": {"profile": "h100-8b"},
        "fleet": {"servers": 1, "bins": {"chat": 1}},
        "tiers": [{"name": "chat", "class": "latency", "tpot_ms": 40, "ttft_ms": 1500, "share": 1.0}],
        "workload": {
            "lengths": "synthetic",
            "prompt": {"mean": 1000, "sigma": 0.5, "max": 4000},
            "output": {"mean": 200, "sigma": 0.5, "max": 800},
            "requests": 1000,
            "length_warmup": 500,
            **wl,
        },
    }
    if envelope is not None:
        raw["workload"]["envelope"] = envelope
    return parse_scenario(raw, "step.yaml")


def test_arrivals_follow_the_steps_and_keep_the_same_random_stream() -> None:
    flat = generate(_scn(None), 10.0, 3000)
    stepped = generate(_scn({"kind": "steps", "steps": [[0, 1], [100, 4]]}), 10.0, 3000)
    assert stepped.prompt == flat.prompt and stepped.tier == flat.tier  # the same requests
    first = sum(1 for a in stepped.arrival if a < 100.0)
    later = sum(1 for a in stepped.arrival if 100.0 <= a < 150.0)
    assert first == pytest.approx(1000, rel=0.1)  # 10 req/s for 100 s
    assert later == pytest.approx(2000, rel=0.1)  # then 40 req/s
    # a change of time: request k arrives where the envelope's mass reaches its flat time
    assert stepped.arrival[2500] == pytest.approx(100.0 + (flat.arrival[2500] - 100.0) / 4.0)


@pytest.mark.parametrize(
    ("env", "wl", "msg"),
    [
        ({"kind": "weekly"}, {}, "workload.envelope.kind"),
        ({"kind": "steps", "steps": [[5, 1]]}, {}, "workload.envelope.steps"),
        ({"kind": "steps", "steps": [[0, 1], [0, 2]]}, {}, "workload.envelope.steps"),
        ({"kind": "steps", "steps": [[0, -1]]}, {}, "workload.envelope.steps"),
        ({"kind": "diurnal", "swing": 0.5}, {}, "workload.envelope.swing"),
        ({"kind": "diurnal", "bogus": 1}, {}, "workload.envelope.bogus"),
        ({"kind": "diurnal"}, {"arrivals": "trace", "lengths": "splitwise_conv"}, "needs arrivals poisson"),
    ],
)
def test_envelope_errors_name_the_path(env: dict[str, Any], wl: dict[str, Any], msg: str) -> None:
    with pytest.raises(ScenarioError) as e:
        _scn(env, **wl)
    assert msg in str(e.value)


def test_a_diurnal_envelope_on_an_unknown_trace_is_a_scenario_error() -> None:
    scn = _scn({"kind": "diurnal", "trace": "/nonexistent.csv"})
    with pytest.raises(ScenarioError, match=r"workload\.envelope\.trace"):
        envelope_of(scn)


def test_the_oracle_integrates_per_tier_ceilings_over_the_envelope() -> None:
    env = Envelope.of([0.0, 100.0], [1.0, 3.0])
    shares, costs = {"a": 0.5, "b": 0.5}, {"a": 0.1, "b": 0.3}
    # 10 req/s: a needs ceil(0.5) = 1, b ceil(1.5) = 2; at x3: ceil(1.5) + ceil(4.5) = 7
    assert oracle_server_seconds(env, 10.0, shares, costs, 50.0, 150.0) == pytest.approx(3 * 50 + 7 * 50)
    assert oracle_server_seconds(None, 10.0, shares, costs, 0.0, 10.0) == pytest.approx(30.0)


# -- the fleet scales ----------------------------------------------------------------------------


class Watch:
    """Records the size of the backend set after every change SimScaling makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[tuple[float, int]] = []
        for name in ("tick", "arrive", "drained"):
            orig = getattr(SimScaling, name)
            monkeypatch.setattr(SimScaling, name, self._wrap(orig))

    def _wrap(self, orig: Callable[..., bool]) -> Callable[..., bool]:
        def f(s: SimScaling, *a: Any) -> bool:
            out = orig(s, *a)
            now = a[0].now if name_is_tick(a) else a[-1]
            self.sizes.append((now, len(s.backends)))
            return out

        return f

    def integral(self, start: tuple[float, int], t0: float, t1: float) -> float:
        pts = [start, *self.sizes]
        total = 0.0
        for (a, n), (b, _) in zip(pts, [*pts[1:], (t1, 0)], strict=True):
            total += n * max(0.0, min(b, t1) - max(a, t0))
        return total


def name_is_tick(a: tuple[Any, ...]) -> bool:
    return hasattr(a[0], "now")


STEP = {"kind": "steps", "steps": [[0, 1], [40, 4], [140, 0.4]]}
FAST = {  # short cooldowns so a short run shows the whole cycle
    "provisioning_delay_s": 30.0,
    "idle_s": 10.0,
    "scale_in_cooldown_s": 20.0,
    "scale_out_cooldown_s": 5.0,
}


def _sim(scaler: str, policy: str, delay: float = 30.0, **pool: Any) -> FleetSim:
    scn = _scn(STEP)
    cfg = AutoscaleConfig(enabled=True, **{**FAST, "provisioning_delay_s": delay})
    limits = PoolLimits(interval_s=5.0, max_servers=12, **pool) if scaler != "scaler" else None
    opt = SimOptions(scaling=ScalingOptions(scaler, delay, 12, cfg, limits))
    # 10 req/s, then 40 (three servers' worth at 40 ms), then 4 for ~150 s
    return FleetSim(scn, policy, rate=10.0, requests=400 + 4000 + 600, options=opt)


def test_the_fleet_grows_after_the_delay_shrinks_when_load_drops_and_pays_from_the_ask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch = Watch(monkeypatch)
    sim = _sim("scaler", "polyserve", delay=30.0)
    res = sim.run()
    sc = sim.scaling
    assert sc is not None
    auto = res.summary["autoscale"]
    new = [s for s in sc.servers.values() if s.asked_at > sc.start]
    joined = [s for s in new if s.joined]
    assert joined, "the load step asked for servers"
    assert all(s.asked_at >= 40.0 for s in new)  # nothing before the step
    assert all(s.ready_at - s.asked_at == pytest.approx(30.0) for s in joined)
    # no request reached a new server before it was ready, and new servers did serve
    rec, wl = sim.records, sim.wl
    served = {s.id: 0 for s in joined}
    for rid, b in enumerate(rec.backend):
        if b in served:
            assert wl.arrival[rid] + rec.wait[rid] >= sc.servers[b].ready_at - 1e-9
            served[b] += 1
    assert sum(served.values()) > 100
    assert auto["peak_servers"] >= 3
    # the load dropped: servers were released and the fleet ended smaller than its peak
    assert auto["servers_released"] >= 1
    assert len(sc.backends) < auto["peak_servers"]
    assert auto["decisions_by_kind"].get("in", 0) >= 1
    # cost: from the ask to the release, clipped to the arrivals' span
    t0, t1 = wl.arrival[0], wl.arrival[-1]
    assert auto["server_seconds"] == pytest.approx(sc.server_seconds(t0, t1))
    in_set = watch.integral((t0, 1), t0, t1)  # the backend set's size over time
    starting = sum(min(t1, s.ready_at if s.joined else (s.left_at or t1)) - max(t0, s.asked_at) for s in new)
    assert auto["server_seconds"] == pytest.approx(in_set + starting, rel=1e-9)
    assert starting >= 30.0 * len(joined) - 1e-6  # each joined server paid its delay
    assert res.summary["overall"]["server_seconds_per_good"] == pytest.approx(
        auto["server_seconds"] / res.summary["overall"]["good"]
    )
    timeline = auto["timeline"]
    integral = sum(n * (b - a) for (a, n), (b, _) in zip(timeline, [*timeline[1:], [t1, 0]], strict=True))
    assert integral == pytest.approx(auto["server_seconds"], rel=1e-6)


@pytest.mark.parametrize(
    ("scaler", "policy"),
    [("keda-queue", "least-request"), ("utilisation", "least-request"), ("wva-spare", "slo-pack")],
)
def test_baselines_grow_on_the_step_and_give_servers_back_after_it(scaler: str, policy: str) -> None:
    sim = _sim(scaler, policy, stabilise_down_s=20.0)
    res = sim.run()
    auto = res.summary["autoscale"]
    sc = sim.scaling
    assert sc is not None
    new = [s for s in sc.servers.values() if s.asked_at > sc.start]
    assert new and all(s.asked_at >= 40.0 for s in new)
    assert auto["peak_servers"] >= 2
    assert auto["decisions_by_kind"].get("in", 0) >= 1
    assert len(sc.backends) < auto["peak_servers"]
    tiers = {s.tier for s in new}
    assert tiers == {"chat"}  # the pool's tier label (the loosest)


def test_scaling_needs_one_router_and_a_known_scaler() -> None:
    with pytest.raises(ValueError, match="one router"):
        FleetSim(
            _scn(None),
            "polyserve",
            rate=10.0,
            requests=10,
            options=SimOptions(replicas=ReplicaOptions(2), scaling=ScalingOptions()),
        )
    with pytest.raises(ValueError, match="unknown scaler"):
        ScalingOptions("hpa")


# -- the baselines' rules ------------------------------------------------------------------------

TIER = Tier("chat", Slo(SloClass.LATENCY, 1.0, 0.040), rank=0)
LIM = EngineLimits(max_num_seqs=100, kv_capacity_tokens=1_000_000, max_batched_tokens=2048)


class Pool:
    """A tracker over ``n`` servers and a pool scaler, with gauges set by the test."""

    def __init__(self, scaler: PoolScaler, n: int) -> None:
        self.clock = ManualClock()
        ids = [f"s{i}" for i in range(n)]
        self.set = BackendSet([Backend(b, f"sim://{b}", tier="chat") for b in ids], (TIER,))
        self.tracker = Tracker(
            self.clock,
            self.set,
            Health(ids),
            StaticLatency(LinearStep(c0_s=0.01), limits=LIM),
            StaticLengths(100),
        )
        self.scaler = scaler
        self.rid = 0

    def hold(self, backend: str, k: int = 1) -> None:
        for _ in range(k):
            self.rid += 1
            self.tracker.on_arrival(RequestInfo(self.rid, TIER, self.clock.now(), 100, None, 100))
            self.tracker.on_dispatch(self.rid, backend)

    def tick(self, dt: float, **g: tuple[int, int, float]) -> Any:
        self.clock.advance(dt)
        gauges = {}
        for b in self:
            running, waiting, kv = g.get(b, (0, 0, 0.0))
            gauges[b] = EngineGauges(running, waiting, kv, LIM.max_num_seqs)
        return self.scaler.tick(self.tracker.snapshot(), (), gauges)

    def __iter__(self) -> Any:
        return iter(b.id for b in self.set.backends)


def test_keda_queue_follows_the_hpa_formula_and_tolerance() -> None:
    p = Pool(KedaQueue(PoolLimits(interval_s=15.0, max_servers=10), "chat"), 2)
    r = p.tick(15.0, s0=(100, 15, 0.5), s1=(100, 16, 0.5))  # 31 waiting: ceil(31 / 5) = 7 ...
    assert [(d.desired, d.add) for d in r.decisions] == [(6, 4)]  # ... limited to max(2 x 2, 2 + 4)
    r = p.tick(15.0, s0=(100, 20, 0.5), s1=(100, 20, 0.5))  # 40 / (6 x 5): out of the 10 %
    assert [(d.desired, d.add) for d in r.decisions] == [(8, 2)]
    calm = Pool(KedaQueue(PoolLimits(interval_s=15.0), "chat"), 4)
    assert calm.tick(15.0, s0=(100, 5, 0.5), s1=(100, 6, 0.5), s2=(9, 10, 0.1)).decisions == ()  # 21 / 20


def test_keda_queue_scales_in_only_after_the_stabilisation_window_least_loaded_first() -> None:
    p = Pool(KedaQueue(PoolLimits(interval_s=15.0), "chat"), 3)
    p.hold("s0")
    for _ in range(20):  # nothing waits; the starting 3 stay the window's highest for 300 s
        assert p.tick(15.0).decisions == ()
    r = p.tick(15.0)
    assert [(d.desired, d.current, d.remove) for d in r.decisions] == [(1, 1, ("s1", "s2"))]
    assert r.release == ("s1", "s2") and p.scaler.counts == {"in": 1}


def test_utilisation_sizes_to_the_band_edges() -> None:
    p = Pool(Utilisation(PoolLimits(interval_s=15.0, stabilise_down_s=0.0), "chat"), 2)
    r = p.tick(15.0, s0=(90, 0, 0.5), s1=(90, 0, 0.5))  # 90 % of 100 running: out, to 80 %
    assert [(d.desired, d.add) for d in r.decisions] == [(math.ceil(180 / 80), 1)]
    assert p.tick(15.0, s0=(50, 0, 0.5), s1=(50, 0, 0.5)).decisions == ()  # 50 %: inside the band
    p4 = Pool(Utilisation(PoolLimits(interval_s=15.0, stabilise_down_s=0.0), "chat"), 4)
    p4.hold("s1")
    r = p4.tick(15.0, s0=(10, 0, 0.1), s1=(10, 0, 0.1), s2=(5, 0, 0.1), s3=(0, 0, 0.0))  # 6 %
    assert r.decisions[0].desired == math.ceil(25 / 30)  # in, to 30 %: 1 server
    assert r.release == ("s0", "s2", "s3")  # the router's emptiest first (s1 holds a request)


def test_wva_adds_one_when_saturated_waits_for_it_and_removes_one_when_safe() -> None:
    p = Pool(WvaSpare(PoolLimits(interval_s=30.0, stabilise_down_s=0.0), "chat"), 2)
    r = p.tick(30.0, s0=(50, 6, 0.3), s1=(50, 3, 0.3))  # s0 saturated; s1's spare queue 2 < 3
    assert [(d.desired, d.add) for d in r.decisions] == [(3, 1)]
    assert p.tick(30.0, s0=(50, 9, 0.3), s1=(50, 9, 0.3)).decisions == ()  # one is on its way
    p3 = Pool(WvaSpare(PoolLimits(interval_s=30.0, stabilise_down_s=0.0), "chat"), 3)
    r = p3.tick(30.0, s0=(5, 0, 0.1), s1=(5, 0, 0.1), s2=(5, 0, 0.1))
    assert r.decisions[0].desired == 2 and len(r.release) == 1  # 0.3 KV over 2: spare 0.65 >= 0.1


def test_wva_reads_peaks_over_the_last_minute() -> None:
    p = Pool(WvaSpare(PoolLimits(interval_s=30.0, stabilise_down_s=0.0), "chat"), 3)
    busy = {"s0": (20, 2, 0.1), "s1": (20, 2, 0.1), "s2": (20, 2, 0.1)}
    assert p.tick(30.0, **busy).decisions == ()  # spare queue 3: no add; 6 over 2 servers: not safe
    assert p.tick(30.0).decisions == ()  # quiet now, but the 60 s peak still says 2 waiting
    r = p.tick(40.0)  # the busy sample left the window
    assert r.decisions[0].desired == 2


# -- the CLI -------------------------------------------------------------------------------------


def _cli(**kw: Any) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    fleet_cli.add_arguments(p)
    argv: list[str] = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def test_simulate_autoscale_runs_a_scaling_fleet_and_reports_its_bill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scn_file = tmp_path / "step.yaml"
    scn_file.write_text(
        yaml.safe_dump(
            {
                "name": "step",
                "seed": 3,
                "fleet": {"servers": 1, "bins": {"chat": 1}},
                "tiers": [{"name": "chat", "class": "latency", "tpot_ms": 40, "ttft_ms": 1500, "share": 1.0}],
                "workload": {
                    "lengths": "synthetic",
                    "prompt": {"mean": 1000, "sigma": 0.5, "max": 4000},
                    "output": {"mean": 200, "sigma": 0.5, "max": 800},
                    "envelope": STEP,
                },
            }
        )
    )
    out = tmp_path / "r.json"
    args = _cli(
        scenario=scn_file,
        policy="polyserve",
        rate=10,
        requests=2500,
        autoscale="scaler",
        provisioning_delay=20,
        json=out,
        no_progress=True,
    )
    assert fleet_cli.run(args) == 0
    auto = json.loads(out.read_text())["result"]["autoscale"]
    assert auto["scaler"] == "scaler" and auto["provisioning_delay_s"] == 20
    assert auto["servers_asked"] >= 1 and auto["server_seconds"] > 0
    assert "autoscale (scaler, 20 s to start a server)" in capsys.readouterr().out
    for bad in ({"sweep": True}, {"rate": 10, "replicas": 2}, {"rate": 10, "provisioning_delay": -1}):
        assert fleet_cli.run(_cli(scenario=scn_file, policy="polyserve", autoscale="scaler", **bad)) == 2
    with pytest.raises(SystemExit):
        _cli(scenario=scn_file, policy="polyserve", autoscale="hpa")
