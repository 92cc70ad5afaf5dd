"""``benchmarks.overload`` (``scripts/bench_overload.py``) end to end at a tiny scale: the
JSON has the shape the issue asks for, and the measurement window counts what it says it counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import overload as bench
from slorouter.fleetsim.fleet import FleetSim
from slorouter.fleetsim.scenario import load_scenario


def test_the_json_has_every_scenario_policy_and_load(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    argv = [
        "--json",
        str(out),
        "--scenarios",
        "polyserve-code",
        "--policies",
        "polyserve,least-request",
        "--loads",
        "1,3",
        "--warmup",
        "1",
        "--duration",
        "2",
        "--base",
        "polyserve-code=300",
    ]
    assert bench.main(argv) == 0
    data = json.loads(out.read_text())
    entry = data["scenarios"]["polyserve-code"]
    assert entry["base_rps"] == 300 and entry["servers"] == 20
    for kind in ("polyserve", "least-request"):
        loads = entry["policies"][kind]["loads"]
        assert [p["offered_x"] for p in loads] == [1.0, 3.0]
        assert [p["offered_rps"] for p in loads] == [300.0, 900.0]
        for p in loads:
            assert p["goodput_rps_per_server"] >= 0 and p["p99_ttft_over_slo"] >= 0
            assert set(p["tiers"]) == {"t20", "t30", "t50", "t100"}
    ps = entry["policies"]["polyserve"]["loads"]
    lr = entry["policies"]["least-request"]["loads"]
    assert entry["polyserve_goodput_at_1x"] == ps[0]["goodput_rps_per_server"]
    # at 3x the SLO-blind balancer serves everything, late; polyserve sheds instead
    assert lr[1]["tiers"]["t100"]["shed_share"] == 0 and ps[1]["tiers"]["t100"]["shed_share"] > 0
    assert ps[1]["p99_ttft_over_slo"] < lr[1]["p99_ttft_over_slo"]


def test_the_window_counts_good_requests_that_arrived_in_it() -> None:
    scn = load_scenario("polyserve-code")
    sim = FleetSim(scn, "polyserve", rate=200.0, requests=800)
    sim.run()
    arrival = np.asarray(sim.wl.arrival)
    start, end = float(arrival[100]), float(arrival[700])
    got = bench.measure(sim, start, end)
    inside = (arrival >= start) & (arrival < end)
    good = int(np.asarray(sim.records.dslo, dtype=bool)[inside].sum())
    assert got["goodput_rps_per_server"] == pytest.approx(good / (end - start) / 20)
    assert sum(t["arrivals"] for t in got["tiers"].values()) == int(inside.sum())
