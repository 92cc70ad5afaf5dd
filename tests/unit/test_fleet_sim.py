"""The offline fleet simulator: accounting, determinism, per-token deadlines, the fluid
bound, scenarios and their errors, the sweep, the CLI."""

from __future__ import annotations

import argparse
import json
import math
from array import array
from pathlib import Path
from typing import Any

import pytest

from slorouter.engine.results import Segment
from slorouter.fleetsim import cli as fleet_cli
from slorouter.fleetsim.bound import auto_bins, fluid_reference, steady_step
from slorouter.fleetsim.fleet import FleetSim, SimOptions, SimResult, run_once
from slorouter.fleetsim.metrics import on_time_tokens
from slorouter.fleetsim.scenario import SCENARIO_DIR, Scenario, ScenarioError, load_scenario, parse_scenario
from slorouter.fleetsim.sweep import sweep
from slorouter.fleetsim.workload import check_slos, generate


def small(lengths: str = "synthetic", **over: Any) -> Scenario:
    raw: dict[str, Any] = {
        "name": "small",
        "seed": 7,
        "engine": {"profile": "h100-8b"},
        "fleet": {"servers": 4, "bins": {"fast": 2, "slow": 2}},
        "tiers": [
            {"name": "fast", "class": "latency", "tpot_ms": 20, "ttft_ms": [500, 1000], "share": 0.5},
            {"name": "slow", "class": "latency", "tpot_ms": 60, "ttft_ms": 2000, "share": 0.5},
        ],
        "workload": {
            "lengths": lengths,
            "prompt": {"mean": 300, "sigma": 0.5, "max": 2000},
            "output": {"mean": 60, "sigma": 0.5, "max": 300},
            "requests": 250,
            "length_warmup": 200,
        },
    }
    raw.update(over)
    return parse_scenario(raw, "small.yaml")


@pytest.mark.parametrize("kind", ["round-robin", "static-partition", "polyserve", "slo-pack"])
def test_every_arrival_is_accounted_for_and_state_drains(kind: str) -> None:
    scn = small()
    sim = FleetSim(scn, kind, rate=20.0)
    r = sim.run()
    o = r.summary["overall"]
    assert o["arrivals"] == 250
    assert o["finished"] + o["rejected"] + o["errors"] + o["unfinished"] == 250
    assert sum(t["arrivals"] for t in r.summary["tiers"].values()) == 250
    assert 0.0 <= o["dslo_attainment"] <= o["mean_tpot_attainment"] + 0.1
    if o["unfinished"] == 0:
        assert sim.tracker.all_zero()
    assert r.steps > 0 and r.decisions >= 250 - o["rejected"]


def test_light_load_meets_every_slo_and_overload_does_not() -> None:
    scn = small()
    light = run_once(scn, "polyserve", 5.0).summary
    heavy = run_once(scn, "round-robin", 4000.0).summary
    assert light["min_tier_dslo_attainment"] == 1.0
    assert heavy["tiers"]["fast"]["dslo_attainment"] < 0.9


def test_deterministic_under_the_seed() -> None:
    scn = small()
    a = run_once(scn, "power-of-two", 30.0).summary
    b = run_once(scn, "power-of-two", 30.0).summary
    c = run_once(scn, "power-of-two", 30.0, seed=99).summary
    assert a == b
    assert a != c


def test_same_workload_for_every_rate_scaled_arrivals() -> None:
    scn = small()
    w1, w2 = generate(scn, 10.0), generate(scn, 20.0)
    assert w1.prompt == w2.prompt and w1.output == w2.output and w1.tier == w2.tier
    assert w2.arrival[-1] == pytest.approx(w1.arrival[-1] / 2)
    shares = sum(1 for t in w1.tier if t == 0) / len(w1.tier)
    assert 0.4 < shares < 0.6
    assert {v.slo.ttft_s for v, t in zip(w1.variant, w1.tier, strict=True) if t == 0} == {0.5, 1.0}


def test_trace_lengths_and_trace_arrivals() -> None:
    scn = small(
        lengths="splitwise_code", workload={"lengths": "splitwise_code", "arrivals": "trace", "requests": 50}
    )
    w = generate(scn, 100.0)
    assert w.prompt[:3] == [4808, 3180, 110]  # the trace's first rows, in order
    assert w.arrival == sorted(w.arrival)


def test_per_token_deadlines_from_step_ends() -> None:
    ends = array("d", [1.0, 1.1, 1.2, 1.5, 1.6])
    # tokens 0..4 at the ends of steps 0..4; deadlines 1.0 + 0.1 i: token 3 is 0.2 late,
    # token 4 (due 1.4) 0.2 late
    assert on_time_tokens(ends, (Segment(0, 0, 5),), 1.0, 0.1) == 3
    # a preempted request: tokens 0..1 at steps 0..1, tokens 2..3 at steps 3..4 (0.3 late)
    assert on_time_tokens(ends, (Segment(0, 0, 2), Segment(3, 2, 2)), 1.0, 0.1) == 2
    assert on_time_tokens(ends, (Segment(0, 0, 5),), 1.0, 0.2) == 5  # a looser schedule
    long = array("d", [0.01 * i for i in range(200)])  # exactly on schedule, vectorized path
    assert on_time_tokens(long, (Segment(0, 0, 200),), 0.0, 0.01) == 200
    assert on_time_tokens(long, (Segment(0, 0, 200),), -0.001, 0.01) == 0


def test_fluid_reference_by_hand(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "0,100,50\n" * 10)
    scn = small(workload={"lengths": str(csv)})
    fb = fluid_reference(scn)
    c = scn.profile.step
    assert (fb.mean_prompt, fb.mean_output, fb.mean_context) == (100, 50, 125)

    def step(b: int) -> float:
        return c.c0_s + c.c_batch_s * b * (1 + 1 / 50) + c.c_kv_s * b * 125 + c.c_prefill_s * b * 2

    for t in fb.tiers:
        assert t.tpot_s is not None
        assert step(t.batch) <= t.tpot_s < step(t.batch + 1) or t.batch == scn.profile.max_num_seqs
        assert t.cost_s == pytest.approx(50 * step(t.batch) / t.batch)
        assert steady_step(scn.profile, t.batch, 100, 50, 125) == pytest.approx(step(t.batch))
    assert fb.rps_per_server == pytest.approx(1 / sum(0.5 * t.cost_s for t in fb.tiers))
    bins = auto_bins(scn, 10, fb)
    assert sum(bins.values()) == 10 and bins["fast"] > bins["slow"]  # the 20 ms tier costs more


def test_sweep_finds_the_threshold() -> None:
    calls: list[float] = []

    def fake(rate: float) -> SimResult:
        calls.append(rate)
        att = 1.0 if rate <= 100 else 0.95 if rate <= 120 else 0.5
        s = {"min_tier_dslo_attainment": att, "overall": {"dslo_attainment": min(1.0, att + 0.02)}}
        return SimResult(s, 0.0, 0.0, 0, 0, 0)

    sw = sweep(fake, 50.0, targets=(0.9, 0.99), rel_tol=0.01)
    g90, g99 = sw.goodput[0.9], sw.goodput[0.99]
    assert g90 is not None and g99 is not None
    assert 118 <= g90 <= 120 and 99 <= g99 <= 100
    assert len(calls) == len(set(calls))  # probes are cached


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        (
            {"tiers": [{"name": "a", "class": "latency", "tpot_ms": -1, "ttft_ms": 100, "share": 1}]},
            "tiers[0].tpot_ms",
        ),
        (
            {"tiers": [{"name": "a", "class": "latency", "ttft_ms": 100, "share": 1, "tpto_ms": 1}]},
            "tiers[0].tpto_ms",
        ),
        ({"fleet": {"servers": 4, "bins": {"fast": 1, "slow": 1}}}, "fleet.bins"),
        ({"engine": {"profile": "h100-9000b"}}, "engine.profile"),
        ({"workload": {"arrivals": "lunar"}}, "workload.arrivals"),
    ],
)
def test_scenario_errors_name_the_path(patch: dict[str, Any], path: str) -> None:
    with pytest.raises(ScenarioError) as e:
        small(**patch)
    assert any(p == path for p, _ in e.value.errors), e.value.errors
    assert f"small.yaml: {path}:" in str(e.value)


def test_an_slo_no_idle_server_can_meet_is_refused() -> None:
    scn = small(
        tiers=[{"name": "a", "class": "latency", "tpot_ms": 2, "ttft_ms": 1, "share": 1}],
        fleet={"servers": 2},
    )
    with pytest.raises(ScenarioError) as e:
        check_slos(scn)
    paths = [p for p, _ in e.value.errors]
    assert paths == ["tiers[0].ttft_ms", "tiers[0].tpot_ms"]


SHIPPED = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def test_the_shipped_scenarios_are_the_documented_ones() -> None:
    assert set(SHIPPED) >= {
        "polyserve-conv",
        "polyserve-code",
        "chat-batch",
        "llama70b-conv",
        "bursty-conv",
        "long-context",
        "prefill-light",
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load_are_meetable_and_simulate(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scn = load_scenario(name)
    assert scn.name == name
    check_slos(scn)
    assert fluid_reference(scn).rps_per_server > 0
    # `slorouter simulate --scenario NAME` runs it (a few requests at its default rate)
    out = tmp_path / "r.json"
    assert (
        fleet_cli.run(_args(scenario=name, policy="polyserve", requests=60, json=out, no_progress=True)) == 0
    )
    data = json.loads(out.read_text())
    assert data["result"]["overall"]["arrivals"] == 60
    assert 0 < data["upper_bound"]["0.99"]["rps_per_server"] <= data["upper_bound"]["0.9"]["rps_per_server"]


def _args(**kw: Any) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    fleet_cli.add_arguments(p)
    argv = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return p.parse_args(argv)


def test_cli_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code = fleet_cli.run(
        _args(scenario="chat-batch", policy="polyserve", requests=300, rate=40, json=out, no_progress=True)
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data["result"]["overall"]["arrivals"] == 300
    assert set(data["result"]["tiers"]) == {"chat", "batch"}
    assert math.isclose(data["result"]["rate_rps"], 40)
    assert "chat" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"scenario": "nope", "policy": "polyserve"}, "no such scenario"),
        ({"scenario": "chat-batch", "policy": "nope"}, "unknown policy"),
        ({"scenario": "chat-batch", "policy": "polyserve", "rate": -1}, "--rate must be > 0"),
        ({"scenario": "chat-batch", "policy": "polyserve", "param": "placement=up"}, "placement"),
        (
            {"scenario": "chat-batch", "policy": "polyserve", "misses": "/nonexistent/m.jsonl"},
            "no such directory",
        ),
        (
            {"scenario": "chat-batch", "policy": "polyserve", "json": "/nonexistent/r.json"},
            "no such directory",
        ),
    ],
)
def test_cli_errors_say_what_to_do(kw: dict[str, Any], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet_cli.run(_args(no_progress=True, requests=50, **kw)) == 2
    assert msg in capsys.readouterr().err.replace("\n", " ")


def test_learning_off_keeps_the_priors() -> None:
    scn = small()
    sim = FleetSim(scn, "polyserve", rate=20.0, options=SimOptions(learn=False))
    sim.run()
    assert all(sim.latency.observations(b.id) == 0 for b in sim.backends.backends)


def test_best_effort_work_parked_until_arrivals_stop_does_not_count() -> None:
    """One server, a best-effort tier only: at a rate it keeps up with, every request
    counts; far above it, the router queue grows while arrivals last and the work served
    only in the drain is not counted good (a rate the fleet cannot sustain). Misses are
    reported by cause and the queue wait alongside."""
    scn = small(
        fleet={"servers": 1, "bins": {"bulk": 1}},
        tiers=[{"name": "bulk", "class": "best_effort", "share": 1.0}],
    )
    scn_long = small(
        fleet={"servers": 1, "bins": {"bulk": 1}},
        tiers=[{"name": "bulk", "class": "best_effort", "share": 1.0}],
        workload={
            "lengths": "synthetic",
            "prompt": {"mean": 300, "sigma": 0.5, "max": 2000},
            "output": {"mean": 60, "sigma": 0.5, "max": 300},
            "requests": 2500,
        },
    )
    light = run_once(scn, "slo-pack", 2.0).summary["tiers"]["bulk"]
    assert light["dslo_attainment"] == 1.0
    heavy = run_once(scn_long, "slo-pack", 400.0).summary["tiers"]["bulk"]
    assert heavy["finished"] == 2500  # everything is served in the end ...
    assert heavy["dslo_attainment"] < 0.9  # ... but most of it only after arrivals stopped
    assert heavy["queue_wait_s"]["p99"] > 10.0
    missed = heavy["arrivals"] - heavy["good"]
    assert heavy["misses"] == {"ttft": 0, "pace": 0, "backlog": missed}  # no SLO: not TTFT or pace


def test_miss_log_matches_the_summary_and_names_where_each_miss_ran() -> None:
    scn = small()
    r = run_once(scn, "polyserve", 4000.0, options=SimOptions(miss_log=True))
    assert r.misses is not None
    o = r.summary["overall"]
    assert len(r.misses) == o["arrivals"] - o["good"] > 0
    by_cause: dict[str, int] = {}
    for row in r.misses:
        by_cause[row["cause"]] = by_cause.get(row["cause"], 0) + 1
    assert {k: by_cause.get(k, 0) for k in ("ttft", "pace", "backlog")} == o["misses"]
    assert by_cause.get("rejected", 0) == o["rejected"]
    for row in r.misses:
        if row["cause"] in ("ttft", "pace"):
            # it ran somewhere: the server, its tier and the load it was placed at are known
            assert row["backend"] in {"s0", "s1", "s2", "s3"}
            assert row["backend_tier"] in {"fast", "slow"}
            assert row["running_at_dispatch"] >= 0 and row["decision"]
        if row["cause"] == "ttft":
            assert row["ttft_s"] > 0.5  # the smallest TTFT of the scenario
    assert run_once(scn, "round-robin", 400.0).misses is None  # off by default


def test_cli_miss_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.jsonl"
    code = fleet_cli.run(
        _args(
            scenario="chat-batch", policy="round-robin", requests=400, rate=400, misses=out, no_progress=True
        )
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["tier"] in ("chat", "batch") for r in rows)
    text = capsys.readouterr().out
    assert "misses by tier, cause and decision" in text and f"wrote {len(rows)} misses" in text
    assert fleet_cli.run(_args(scenario="chat-batch", policy="polyserve", sweep=True, misses=out)) == 2
    assert "--misses logs one run" in capsys.readouterr().err


def test_gamma_arrivals_are_bursty_as_asked_and_deterministic() -> None:
    scn = load_scenario("bursty-conv")
    assert (scn.workload.arrivals, scn.workload.cv) == ("gamma", 3.0)
    a = generate(scn, 100.0, 40_000)
    assert a.arrival == generate(scn, 100.0, 40_000).arrival  # seeded
    gaps = [y - x for x, y in zip([0.0, *a.arrival], a.arrival, strict=False)]
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert mean == pytest.approx(1 / 100.0, rel=0.05)
    assert sd / mean == pytest.approx(3.0, rel=0.1)
    # the same draws at another rate, gaps scaled (common random numbers)
    b = generate(scn, 50.0, 1000)
    assert b.arrival == pytest.approx([2 * x for x in a.arrival[:1000]])
    assert b.prompt == a.prompt[:1000] and b.tier == a.tier[:1000]
