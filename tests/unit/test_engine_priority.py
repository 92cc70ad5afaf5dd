"""The engine model's priority scheduling (vLLM's ``--scheduling-policy priority``):
admission by (priority, arrival), the lowest-priority running request as the preemption
victim, preempted requests back in priority order, fcfs untouched."""

from __future__ import annotations

import math
import random

import pytest

from slorouter.engine.model import EngineModel
from slorouter.engine.results import StepResult
from tests.unit.test_sim_engine import prof, run


def first_tokens(res: list[StepResult]) -> list[object]:
    return [rid for r in res for rid in r.first_token]


def test_admission_follows_priority_then_arrival() -> None:
    eng = EngineModel(prof(seqs=1), scheduling="priority")
    eng.submit("a", 10, 2, 0.0, priority=5)
    eng.submit("b", 10, 2, 0.0, priority=1)
    eng.submit("c", 10, 2, 0.0, priority=3)
    eng.submit("d", 10, 2, 0.0, priority=1)  # same priority and arrival as b: submission order
    eng.submit("e", 10, 2, -1.0, priority=3)  # arrived before c: goes first among the 3s
    eng.submit("f", 10, 2, 0.0, priority=math.inf)  # best effort: last
    eng.submit("g", 10, 2, 0.0, priority=-2)
    assert first_tokens(run(eng)) == ["g", "b", "d", "e", "c", "a", "f"]
    fcfs = EngineModel(prof(seqs=1))
    for rid in "abcdefg":
        fcfs.submit(rid, 10, 2, 0.0)
    assert first_tokens(run(fcfs)) == list("abcdefg")


def _kv_race(scheduling: str) -> tuple[list[StepResult], EngineModel]:
    """``lo`` is admitted first, ``hi`` a step later (the newest); their KV then grows
    past the capacity while both decode."""
    eng = EngineModel(prof(kv=100, seqs=2), scheduling=scheduling, keep_history=True)
    pri = scheduling == "priority"
    eng.submit("lo", 40, 40, 0.0, priority=9 if pri else 0)
    end = eng.plan(0.0)
    assert end is not None
    res = [eng.step()]
    eng.submit("hi", 40, 40, end, priority=1 if pri else 0)
    eng.submit("mid", 5, 5, end, priority=5 if pri else 0)  # waits: max_num_seqs is 2
    return res + run(eng, end), eng


def test_preemption_takes_the_lowest_priority_not_the_newest() -> None:
    res, eng = _kv_race("priority")
    pre = [r.preempted for r in res if r.preempted]
    assert pre[0] == ("lo",)
    assert all("hi" not in p for p in pre)
    done = {f.rid: f for r in res for f in r.finished}
    assert done["hi"].preemptions == 0 and done["lo"].preemptions >= 1
    assert eng.kv_tokens == 0 and eng.num_running == eng.num_waiting == 0
    # fcfs (the same arrivals): the newest running request is the victim
    res_f, _ = _kv_race("fcfs")
    assert next(r.preempted for r in res_f if r.preempted) == ("hi",)


def test_a_preempted_request_waits_behind_more_urgent_work() -> None:
    # priority: lo (9) goes back behind mid (5), which arrived after it; fcfs puts the
    # preempted request (there: hi) back at the head, before mid
    for scheduling, victim, first in (("priority", "lo", "mid"), ("fcfs", "hi", "hi")):
        res, _ = _kv_race(scheduling)
        done = {f.rid: f for r in res for f in r.finished}
        assert done[victim].preemptions == 1
        resumed = done[victim].segments[1].start_step
        mid_first = done["mid"].segments[0].start_step
        assert (mid_first < resumed) == (first == "mid"), scheduling


def test_an_urgent_prefill_preempts_a_less_urgent_decoder_not_itself() -> None:
    # "lo" decodes; "hi" (admitted after it) prefills in chunks until its next chunk does
    # not fit: priority preempts lo, fcfs preempts hi itself (the newest)
    for scheduling, victim in (("priority", "lo"), ("fcfs", "hi")):
        eng = EngineModel(prof(kv=300, budget=64, seqs=4), scheduling=scheduling)
        pri = scheduling == "priority"
        eng.submit("lo", 60, 100, 0.0, priority=9 if pri else 0)
        eng.plan(0.0)
        eng.step()
        eng.submit("hi", 250, 5, 0.0, priority=1 if pri else 0)
        res = run(eng)
        step = next(r for r in res if r.preempted)
        assert step.preempted == (victim,), scheduling
        assert step.kv_tokens <= 300 and step.num_decodes + step.prefill_tokens <= 64
        done = {f.rid: f for r in res for f in r.finished}
        other = "hi" if victim == "lo" else "lo"
        assert done[victim].preemptions >= 1 and done[other].preemptions == 0


def test_priority_needs_priority_scheduling_and_a_number() -> None:
    with pytest.raises(ValueError, match="Priority scheduling is not enabled"):
        EngineModel(prof()).submit("a", 10, 2, 0.0, priority=3)
    EngineModel(prof()).submit("a", 10, 2, 0.0, priority=0)  # the default: accepted
    with pytest.raises(ValueError, match="NaN"):
        EngineModel(prof(), scheduling="priority").submit("a", 10, 2, 0.0, priority=math.nan)
    with pytest.raises(ValueError, match="fcfs, priority"):
        EngineModel(prof(), scheduling="edf")


def _random_run(scheduling: str, seed: int, priorities: bool) -> list[tuple[object, ...]]:
    """A random workload with preemptions and aborts; every invariant checked; returns
    the steps (what fcfs and priority must agree on when priorities are equal)."""
    rng = random.Random(seed)
    cap, seqs, budget = 2000, 6, 128
    eng = EngineModel(prof(kv=cap, budget=budget, seqs=seqs), scheduling=scheduling, keep_history=True)
    live: dict[int, int] = {}
    trace: list[tuple[object, ...]] = []
    now, rid = 0.0, 0
    for _ in range(3000):
        if rng.random() < 0.3:
            out = rng.randint(1, 300)
            prio = rng.choice((0.0, 1.0, 2.5, math.inf)) if priorities else 0.0
            eng.submit(rid, rng.randint(1, 600), out, now, priority=prio)
            live[rid] = out
            rid += 1
        if live and rng.random() < 0.02:
            victim = rng.choice(sorted(live))
            assert eng.abort(victim)
            del live[victim]
        end = eng.plan(now)
        if end is None:
            assert not eng.num_running and not eng.num_waiting  # idle only when empty
            now += 0.01
            continue
        now = end
        r = eng.step()
        assert 0 <= eng.kv_tokens <= cap and eng.num_running <= seqs
        assert r.num_decodes + r.prefill_tokens <= budget and r.batch >= 1
        trace.append((r.start, r.end, r.batch, r.prefill_tokens, r.kv_tokens, r.first_token, r.preempted))
        for f in r.finished:
            assert f.output_tokens == live.pop(f.rid)
            trace.append((f.rid, f.preemptions, f.segments))
    for r in run(eng, now):
        for f in r.finished:
            assert f.output_tokens == live.pop(f.rid)
    assert not live and eng.kv_tokens == 0 and eng.num_running == eng.num_waiting == 0
    assert eng.num_preemptions_total > 0
    return trace


@pytest.mark.parametrize("seed", [5, 11])
def test_random_priorities_keep_every_invariant(seed: int) -> None:
    _random_run("priority", seed, priorities=True)


@pytest.mark.parametrize("seed", [5, 11])
def test_equal_priorities_schedule_exactly_as_fcfs(seed: int) -> None:
    assert _random_run("priority", seed, priorities=False) == _random_run("fcfs", seed, priorities=False)
