"""The fleet simulator with engines that schedule by priority (``engine.scheduling:
priority``, vLLM's ``--scheduling-policy priority``): every request reaches its engine with
its due time as priority — an EDF queue at each engine — and fcfs engines get none."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from slorouter.engine.model import EngineModel
from slorouter.fleetsim.fleet import FleetSim
from slorouter.fleetsim.scenario import ScenarioError, load_scenario

SCN = """
name: edf
seed: 2
engine: {profile: h100-8b, scheduling: %s}
fleet: {servers: 4, bins: {chat: 1, tools: 1, agents: 1, filler: 1}}
tiers:
  - {name: chat, class: latency, ttft_ms: [1000, 2000], tpot_ms: 100, share: 0.3}
  - {name: tools, class: deadline, deadline_ms: 20000, share: 0.3}
  - {name: agents, class: workflow, deadline_ms: 20000, deadline_per_call: true, share: 0.3,
     workflow: {shape: chain, calls: [3, 4]}}
  - {name: filler, class: best_effort, share: 0.1}
workload: {lengths: splitwise_conv, requests: 300}
"""


class Recording(EngineModel):
    """The real engine model, noting the priority each request was submitted with."""

    seen: dict[int, float]

    def submit(  # type: ignore[override]
        self, rid: int, prompt_tokens: int, output_tokens: int, now: float, priority: float = 0.0
    ) -> None:
        self.seen[rid] = priority
        super().submit(rid, prompt_tokens, output_tokens, now, priority)


def sim_with(tmp_path: Path, scheduling: str) -> tuple[FleetSim, dict[int, float]]:
    p = tmp_path / "edf.yaml"
    p.write_text(SCN % scheduling)
    scn = load_scenario(str(p))
    assert scn.scheduling == scheduling
    sim = FleetSim(scn, "least-request", rate=20.0)
    seen: dict[int, float] = {}
    for i, e in enumerate(sim.engines):
        rec = Recording(e.profile, seed=i, keep_history=True, scheduling=e.scheduling)
        rec.seen = seen
        sim.engines[i] = rec
    return sim, seen


def test_each_request_carries_its_due_time(tmp_path: Path) -> None:
    sim, seen = sim_with(tmp_path, "priority")
    sim.run()
    wl = sim.wl
    by_class: dict[str, int] = {}
    for rid, prio in seen.items():
        v = wl.variant[rid]
        cls = v.slo.slo_class.value
        by_class[cls] = by_class.get(cls, 0) + 1
        at = sim.call_arrival[rid]
        if cls == "latency":
            assert v.slo.ttft_s is not None
            assert prio == pytest.approx(at + v.slo.ttft_s)
        elif cls == "deadline":
            assert prio == pytest.approx(at + 20.0)
        elif cls == "workflow":  # the workflow's: its first call's send + 20 s x calls
            calls = wl.unit.count(wl.unit[rid])
            assert prio == pytest.approx(sim.call_arrival[wl.unit[rid]] + 20.0 * calls)
        else:
            assert prio == math.inf
    assert set(by_class) == {"latency", "deadline", "workflow", "best_effort"}
    # both TTFT draws of the chat tier were seen, so the first-token deadline is per request
    assert len({wl.variant[r].slo.ttft_s for r in seen if wl.variant[r].name == "chat"}) == 2
    # a workflow's later calls were released after their predecessors: same priority, later send
    later = [r for r in seen if wl.variant[r].name == "agents" and wl.unit[r] != r]
    assert later and all(sim.call_arrival[r] > sim.call_arrival[wl.unit[r]] for r in later)


def test_fcfs_engines_get_no_priority(tmp_path: Path) -> None:
    sim, seen = sim_with(tmp_path, "fcfs")
    sim.run()
    assert seen and set(seen.values()) == {0.0}


def test_the_scheduling_is_checked_and_overridable(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(SCN % "edf")
    with pytest.raises(ScenarioError, match=r"engine\.scheduling"):
        load_scenario(str(p))
    p.write_text(SCN % "fcfs")
    scn = replace(load_scenario(str(p)), scheduling="priority")
    assert all(e.scheduling == "priority" for e in FleetSim(scn, "least-request", rate=5.0).engines)
