"""The simulator's service gain: slojudge applied to its records, and — through the
tracker the simulator drives — the same figure the router computes, to the token."""

from __future__ import annotations

import random
from typing import Any

import pytest

import slojudge
from slorouter.engine.model import EngineModel
from slorouter.engine.results import Finished, token_times
from slorouter.fleetsim.fleet import FleetSim, SimOptions
from slorouter.fleetsim.metrics import OK, on_time_tokens, request_verdicts
from slorouter.fleetsim.scenario import parse_scenario
from slorouter.judge import verdict
from slorouter.models.profile import StepProfile
from slorouter.models.static import LinearStep
from slorouter.values import Outcome, SloClass


def _run_engine(seed: int) -> tuple[EngineModel, list[Finished], dict[Any, float]]:
    """A small engine under KV pressure (preemptions split requests into segments)."""
    prof = StepProfile(
        name="t", step=LinearStep(0.01, 0.002, 0.0, 0.0), max_num_seqs=8, kv_capacity_tokens=1500
    )
    eng = EngineModel(prof, seed=seed, noise=0.3, keep_history=True)
    rnd = random.Random(seed)
    submitted: dict[Any, float] = {}
    for rid in range(24):
        t = rnd.uniform(0.0, 2.0)
        submitted[rid] = t
    done: list[Finished] = []
    now = 0.0
    pending = sorted(submitted.items(), key=lambda kv: kv[1])
    while pending or eng.num_running or eng.num_waiting:
        end = eng.plan(now)
        if pending and (end is None or pending[0][1] <= now):
            rid, t = pending.pop(0)
            now = max(now, t)
            eng.submit(rid, rnd.randint(20, 400), rnd.randint(1, 160), now)
            continue
        assert end is not None
        now = end
        done.extend(eng.step().finished)
    return eng, done, submitted


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_on_time_tokens_is_slojudges_predicate_token_by_token(seed: int) -> None:
    eng, done, submitted = _run_engine(seed)
    assert len(done) == 24
    assert any(len(f.segments) > 1 for f in done)  # preempted requests are covered
    assert any(s.n_tokens > 48 for f in done for s in f.segments)  # and the vectorized path
    partial = 0
    for f in done:
        times = token_times(eng.step_ends, f.segments)
        assert len(times) == f.output_tokens
        for ttft, tpot in ((0.3, 0.015), (1.0, 0.03)):
            due0 = submitted[f.rid] + ttft
            want = sum(slojudge.on_time(t - due0, tpot, i) for i, t in enumerate(times))
            got = on_time_tokens(eng.step_ends, f.segments, due0, tpot)
            assert got == want
            assert got == slojudge.check_chunks(times, [1] * len(times), due0, tpot).on_time
            partial += 0 < got < f.output_tokens
    assert partial > 0  # some requests were partly late: the counts are not all-or-nothing


def _mixed() -> Any:
    return parse_scenario(
        {
            "name": "mixed-small",
            "seed": 3,
            "engine": {"profile": "h100-8b"},
            "fleet": {"servers": 3, "bins": {"chat": 1, "tools": 1, "batch": 1}},
            "tiers": [
                {
                    "name": "chat",
                    "class": "latency",
                    "ttft_ms": 200,
                    "tpot_ms": 10,
                    "share": 0.5,
                    "weight": 3,
                },
                {"name": "tools", "class": "deadline", "deadline_ms": 3000, "share": 0.3, "weight": 2},
                {"name": "batch", "class": "best_effort", "share": 0.2, "weight": 0.2},
            ],
            "workload": {
                "lengths": "synthetic",
                "prompt": {"mean": 600, "sigma": 0.8, "max": 4000},
                "output": {"mean": 120, "sigma": 0.8, "max": 600},
                "requests": 300,
            },
        },
        "mixed-small.yaml",
    )


def test_the_simulators_gain_is_slojudge_on_its_records_and_the_routers_figure() -> None:
    sim = FleetSim(_mixed(), "least-request", rate=40.0, options=SimOptions(sync_tokens=1))
    outcomes: dict[int, Outcome] = {}
    sim.tracker.add_listener(lambda o: outcomes.__setitem__(o.rid, o))
    res = sim.run()
    s, rec, wl = res.summary, sim.records, sim.wl
    names = [t.name for t in wl.tiers]
    # 1. the summary is slojudge on the records, per tier and overall
    vs = request_verdicts(rec, wl)
    for k, name in enumerate(names):
        want = sum(v.gain for v, t in zip(vs, wl.tier, strict=True) if t == k)
        assert s["tiers"][name]["service_gain"] == pytest.approx(want)
    assert s["overall"]["service_gain"] == pytest.approx(sum(v.gain for v in vs))
    assert 0 < s["overall"]["service_gain"] < s["overall"]["service_gain_max"]
    # 2. the records agree with what the router's tracker counted as the tokens streamed
    #    (every token synced at its step end), request by request, to the token
    latency = [
        i for i in range(rec.n) if wl.variant[i].slo.slo_class is SloClass.LATENCY and rec.status[i] == OK
    ]
    assert latency and all(rec.on_time[i] == outcomes[i].on_time_tokens for i in latency)
    assert any(0 < rec.on_time[i] < wl.output[i] for i in latency)  # partly late ones exist
    assert not any(rec.backlog)  # (the router has no backlog rule; none here)
    for k, name in enumerate(names):
        router = 0.0
        for rid, o in outcomes.items():
            v = verdict(o)
            assert v is not None
            if wl.tier[rid] == k:
                router += v.gain
        assert router == pytest.approx(s["tiers"][name]["service_gain"], rel=1e-12)
    # 3. the policies and the queue saw each deadline request's deadline_at, as live
    for rid, o in outcomes.items():
        assert o.request is not None
        dl = wl.variant[rid].slo.deadline_s
        assert o.request.deadline_at == (None if dl is None else wl.arrival[rid] + dl)
    tools = s["tiers"]["tools"]
    assert 0 < tools["dslo_attainment"] < 1  # the deadline tier has both hits and misses
