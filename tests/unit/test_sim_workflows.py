"""Multi-call workflows in the fleet simulator (slorouter.fleetsim.workflows): calls are sent
when their predecessors finish, a workflow is one unit of work (judged on all its calls,
by its first call's arrival + D), and the scenario format refuses bad shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

import slojudge
from slorouter.fleetsim.fleet import FleetSim
from slorouter.fleetsim.scenario import ScenarioError, load_scenario

SCN = """
name: wf
seed: 3
engine: {profile: h100-8b}
fleet: {servers: 4, bins: {chat: 2, agents: 2}}
tiers:
  - {name: chat, class: latency, ttft_ms: 2000, tpot_ms: 100, share: 0.4}
  - {name: agents, class: workflow, deadline_ms: 20000, deadline_per_call: true, share: 0.6,
     workflow: %s}
workload: {lengths: splitwise_conv, requests: 200}
"""


def scenario(tmp_path: Path, shape: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "wf.yaml"
    p.write_text(SCN % shape)
    return load_scenario(str(p))


@pytest.mark.parametrize(
    ("shape", "sizes"),
    [("{shape: chain, calls: [3, 5]}", {3, 4, 5}), ("{shape: fanout, width: 3}", {5})],
)
def test_calls_follow_their_predecessors_and_units_count_once(
    tmp_path: Path, shape: str, sizes: set[int]
) -> None:
    sim = FleetSim(scenario(tmp_path, shape), "tempo", rate=5.0)
    wl = sim.wl
    units: dict[int, list[int]] = {}
    for r, u in enumerate(wl.unit):
        units.setdefault(u, []).append(r)
    wf = {u: rs for u, rs in units.items() if wl.variant[u].name == "agents"}
    assert {len(rs) for rs in wf.values()} == sizes
    res = sim.run()
    rec = sim.records
    for rs in wf.values():
        for r in rs:
            for d in wl.deps[r]:
                if rec.status[r] == 1:  # sent and finished: after every predecessor finished
                    assert sim.call_arrival[r] >= rec.finished_at[d] - 1e-9
                    assert sim.call_arrival[r] + rec.wait[r] >= rec.finished_at[d] - 1e-9
    t = res.summary["tiers"]["agents"]
    assert t["arrivals"] == len(wf)
    assert t["calls"] == sum(len(rs) for rs in wf.values())
    # the unit's gain is slojudge's over all its calls, by first arrival + 20 s x calls
    gain = 0.0
    for u, rs in wf.items():
        calls = [
            slojudge.Call(
                rec.status[r] == 1,
                wl.prompt[r],
                wl.output[r] if rec.status[r] == 1 else 0,
                rec.finished_at[r] if rec.status[r] == 1 else None,
            )
            for r in rs
        ]
        gain += slojudge.judge("workflow", 1.0, calls, wl.arrival[u] + 20.0 * len(rs)).gain
    assert t["service_gain"] == pytest.approx(gain)
    assert t["good"] == sum(rec.dslo[u] for u in wf)


def test_bad_shapes_are_refused_with_their_path(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as e:
        scenario(tmp_path, "{shape: chain, calls: [5, 3]}")
    assert "tiers[1].workflow.calls" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        scenario(tmp_path, "{shape: star}")
    assert "tiers[1].workflow.shape" in str(e.value)
