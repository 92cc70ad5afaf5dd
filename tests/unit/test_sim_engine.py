"""The step-clock engine model: batching, KV, preemption, chunked prefill, timing, cost."""

from __future__ import annotations

import math

import pytest

from slorouter.engine.model import EngineModel
from slorouter.engine.profiles import BUILTIN_PROFILES, load_profile
from slorouter.engine.results import RequestTooLarge, StepResult, token_times
from slorouter.models.profile import ProfileError, StepProfile
from slorouter.models.static import LinearStep


def prof(
    *,
    c0: float = 0.01,
    cb: float = 0.001,
    ckv: float = 0.0,
    cp: float = 0.0,
    seqs: int = 8,
    kv: int = 10_000,
    budget: int = 512,
) -> StepProfile:
    return StepProfile(
        name="t",
        step=LinearStep(c0, cb, ckv, cp),
        max_num_seqs=seqs,
        kv_capacity_tokens=kv,
        max_batched_tokens=budget,
    )


def run(eng: EngineModel, now: float = 0.0, limit: int = 100_000) -> list[StepResult]:
    out = []
    for _ in range(limit):
        end = eng.plan(now)
        if end is None:
            return out
        now = end
        out.append(eng.step())
    raise AssertionError("engine did not go idle")


def test_batching_is_capped_by_max_num_seqs() -> None:
    eng = EngineModel(prof(seqs=4))
    for i in range(10):
        eng.submit(i, 10, 5, 0.0)
    eng.plan(0.0)
    eng.step()
    assert eng.num_running == 4 and eng.num_waiting == 6
    res = run(eng)
    assert max(r.batch for r in res) <= 4
    assert eng.num_running == 0 and eng.num_waiting == 0 and eng.kv_tokens == 0


def test_every_decoding_request_gets_one_token_per_step_and_finishes_at_its_length() -> None:
    eng = EngineModel(prof(), keep_history=True)
    eng.submit("a", 10, 3, 0.0)
    eng.submit("b", 10, 5, 0.0)
    res = run(eng)
    # step 0: both prefills complete -> first tokens; then one token per step
    assert res[0].first_token == ("a", "b")
    done = {f.rid: f for r in res for f in r.finished}
    assert [f.rid for f in res[2].finished] == ["a"]
    assert [f.rid for f in res[4].finished] == ["b"]
    assert len(res) == 5
    assert token_times(eng.step_ends, done["b"].segments) == [r.end for r in res]
    assert token_times(eng.step_ends, done["a"].segments) == [r.end for r in res[:3]]


def test_step_time_follows_the_formula() -> None:
    c0, cb, ckv, cp = 0.02, 0.003, 1e-5, 2e-4
    eng = EngineModel(prof(c0=c0, cb=cb, ckv=ckv, cp=cp))
    eng.submit("a", 100, 4, 1.0)
    eng.submit("b", 50, 4, 1.0)
    end = eng.plan(1.5)
    assert end == pytest.approx(1.5 + c0 + cb * 2 + ckv * 150 + cp * 150)
    eng.step()
    # decode step: 2 sequences, KV 150 + 2 new slots, no prefill
    assert eng.plan(0.0) == pytest.approx(end + c0 + cb * 2 + ckv * 152)  # starts at previous end
    r = eng.step()
    assert (r.batch, r.num_decodes, r.prefill_tokens, r.kv_tokens) == (2, 2, 0, 152)


def test_plan_is_idempotent_and_idle_engine_plans_nothing() -> None:
    eng = EngineModel(prof())
    assert eng.plan(0.0) is None
    eng.submit(1, 5, 2, 0.0)
    e1 = eng.plan(0.0)
    eng.submit(2, 5, 2, 0.001)  # joins the next step, not the planned one
    assert eng.plan(0.002) == e1
    r = eng.step()
    assert r.first_token == (1,)
    assert eng.num_waiting == 1
    with pytest.raises(RuntimeError):
        eng.step()


def test_chunked_prefill_respects_the_token_budget_decodes_first() -> None:
    eng = EngineModel(prof(budget=100, seqs=8))
    eng.submit("d", 10, 50, 0.0)
    eng.plan(0.0)
    eng.step()  # "d" now decoding
    eng.submit("p", 250, 5, 0.0)
    chunks = []
    while "p" in eng and eng.generated("p") == 0:
        eng.plan(0.0)
        r = eng.step()
        assert r.num_decodes + r.prefill_tokens <= 100
        assert r.num_decodes == 1  # the decode is never starved by the prefill
        chunks.append(r.prefill_tokens)
    assert chunks == [99, 99, 52]
    assert eng.generated("p") == 1  # first token at the end of the step completing prefill


def test_kv_full_keeps_requests_waiting() -> None:
    eng = EngineModel(prof(kv=1000, budget=2000, seqs=16))
    for i in range(3):
        eng.submit(i, 400, 10, 0.0)
    r = eng.plan(0.0)
    assert r is not None
    res = eng.step()
    # 400 + 400 fit, the third request's 400 does not: it waits (FIFO)
    assert res.first_token == (0, 1) and eng.num_waiting == 1 and eng.kv_tokens == 800
    run(eng)
    assert eng.kv_tokens == 0 and eng.num_preemptions_total == 0


def test_preemption_of_newest_when_kv_runs_out_and_recompute() -> None:
    eng = EngineModel(prof(kv=230, budget=512, seqs=8), keep_history=True)
    eng.submit("old", 100, 60, 0.0)
    eng.submit("new", 100, 60, 0.0)
    res = run(eng)
    pre = [r for r in res if r.preempted]
    assert pre and pre[0].preempted == ("new",)
    assert eng.num_preemptions_total >= 1
    done = {f.rid: f for r in res for f in r.finished}
    assert done["new"].preemptions >= 1 and done["old"].preemptions == 0
    # every token is accounted for exactly once, in order, across segments
    for f in done.values():
        toks = [s.first_token + j for s in f.segments for j in range(s.n_tokens)]
        assert toks == list(range(60))
        times = token_times(eng.step_ends, f.segments)
        assert times == sorted(times) and len(set(times)) == 60
    # the preempted request's recompute prefill covered prompt + generated tokens
    assert any(r.prefill_tokens > 100 for r in res[pre[0].index :])
    assert eng.kv_tokens == 0


def test_abort_frees_kv_immediately_even_mid_step() -> None:
    eng = EngineModel(prof(kv=500, budget=1000))
    eng.submit("a", 300, 50, 0.0)
    eng.submit("b", 300, 50, 0.0)
    eng.plan(0.0)
    eng.step()
    assert eng.num_waiting == 1 and eng.kv_tokens == 300
    eng.plan(0.0)  # a's decode slot allocated
    assert eng.abort("a") is True
    assert eng.kv_tokens == 0 and eng.num_running == 0
    r = eng.step()
    assert r.finished == () and "a" not in eng
    eng.plan(0.0)
    r = eng.step()
    assert r.first_token == ("b",)
    assert eng.abort("a") is False
    assert eng.abort("b") and eng.kv_tokens == 0


def test_abort_waiting_request() -> None:
    eng = EngineModel(prof(seqs=1))
    eng.submit(1, 5, 3, 0.0)
    eng.submit(2, 5, 3, 0.0)
    assert eng.abort(2) and eng.num_waiting == 1
    eng.submit(2, 5, 3, 0.0)  # the rid may be reused
    res = run(eng)
    assert sorted(f.rid for r in res for f in r.finished) == [1, 2]


def test_deterministic_under_seed_with_noise() -> None:
    def trace(seed: int) -> list[tuple[float, int]]:
        eng = EngineModel(BUILTIN_PROFILES["h100-8b"], seed=seed, noise=0.1)
        for i in range(20):
            eng.submit(i, 100 + 37 * i, 10 + i, 0.01 * i)
        return [(r.end, r.batch) for r in run(eng)]

    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


def test_step_cost_is_independent_of_batch_size() -> None:
    """Work units (requests touched) per pure-decode step do not grow with the batch."""
    per_step = {}
    for n in (10, 200):
        eng = EngineModel(prof(seqs=256, kv=10**7, budget=4096))
        for i in range(n):
            eng.submit(i, 20, 1000, 0.0)
        now = 0.0
        for _ in range(5):  # admission + prefill steps
            now = eng.plan(now) or now
            eng.step()
        w0 = eng.work_units
        for _ in range(500):
            now = eng.plan(now) or now
            eng.step()
        per_step[n] = (eng.work_units - w0) / 500
        assert eng.generated(0) == 505
    assert per_step[200] == per_step[10] == 0.0


def test_submit_validation() -> None:
    eng = EngineModel(prof(kv=100))
    with pytest.raises(RequestTooLarge):
        eng.submit(1, 90, 20, 0.0)
    with pytest.raises(ValueError, match="already"):
        eng.submit(2, 5, 5, 0.0)
        eng.submit(2, 5, 5, 0.0)
    with pytest.raises(ValueError):
        eng.submit(3, 0, 5, 0.0)
    with pytest.raises(ValueError, match="max_batched_tokens"):
        EngineModel(prof(seqs=64, budget=32))


def test_builtin_profiles_have_the_published_shape() -> None:
    p70 = BUILTIN_PROFILES["h100-70b"].step
    ctx = 1024
    for batch, ms in ((1, 37), (16, 42), (32, 52)):
        assert p70.at(batch, batch * ctx) * 1000 == pytest.approx(ms, abs=1.6)
    p8 = BUILTIN_PROFILES["h100-8b"].step
    assert p8.at(1, 2000) < 0.010  # idle step far under the 20 ms tier
    assert p8.at(64, 64 * ctx) < 0.020 < p8.at(256, 256 * ctx)
    tiny = BUILTIN_PROFILES["cpu-tiny"].step
    for batch, itl_ms in ((1, 21.1), (16, 49.4), (32, 83.7)):
        assert tiny.at(batch, 0) * 1000 == pytest.approx(itl_ms, rel=0.06)
    assert math.isclose(BUILTIN_PROFILES["h100-8b"].kv_capacity_tokens / 16, 27648)


def test_load_profile_by_name_and_file(tmp_path: object) -> None:
    from pathlib import Path

    assert load_profile("cpu-tiny").name == "cpu-tiny"
    path = Path(str(tmp_path)) / "p.json"
    BUILTIN_PROFILES["h100-70b"].save(path)
    assert load_profile(str(path)).step == BUILTIN_PROFILES["h100-70b"].step
    with pytest.raises(ProfileError, match="h100-8b"):
        load_profile("nope")


def test_preempting_a_request_in_the_middle_of_its_prefill() -> None:
    eng = EngineModel(prof(kv=300, budget=64, seqs=8), keep_history=True)
    eng.submit("a", 50, 200, 0.0)
    eng.plan(0.0)
    eng.step()
    eng.submit("b", 240, 5, 0.0)
    res = run(eng)
    assert any("b" in r.preempted for r in res)
    done = {f.rid: f for r in res for f in r.finished}
    assert done["a"].preemptions == 0 and done["b"].preemptions >= 1
    assert eng.kv_tokens == 0 and eng.num_running == eng.num_waiting == 0


def test_random_workload_keeps_every_invariant() -> None:
    import random

    rng = random.Random(5)
    cap, seqs = 2000, 6
    eng = EngineModel(prof(kv=cap, budget=128, seqs=seqs), keep_history=True)
    live: dict[int, int] = {}  # rid -> output tokens
    finished: dict[int, tuple[int, tuple]] = {}
    aborted: set[int] = set()
    now, rid = 0.0, 0
    for _ in range(3000):
        if rng.random() < 0.3:
            out = rng.randint(1, 300)
            eng.submit(rid, rng.randint(1, 600), out, now)
            live[rid] = out
            rid += 1
        if live and rng.random() < 0.02:
            victim = rng.choice(sorted(live))
            assert eng.abort(victim)
            aborted.add(victim)
            del live[victim]
        end = eng.plan(now)
        if end is None:
            now += 0.01
            continue
        now = end
        r = eng.step()
        assert 0 <= eng.kv_tokens <= cap and eng.num_running <= seqs
        assert r.num_decodes + r.prefill_tokens <= 128
        for f in r.finished:
            assert f.output_tokens == live.pop(f.rid)
            finished[f.rid] = (f.output_tokens, f.segments)
    for r in run(eng, now):  # drain what is left
        for f in r.finished:
            assert f.output_tokens == live.pop(f.rid)
            finished[f.rid] = (f.output_tokens, f.segments)
    assert not live
    assert eng.kv_tokens == 0 and eng.num_running == 0 and eng.num_waiting == 0
    assert eng.num_preemptions_total > 0 and finished and aborted
    for out, segs in finished.values():
        tokens = [s.first_token + j for s in segs for j in range(s.n_tokens)]
        steps = [s.start_step + j for s in segs for j in range(s.n_tokens)]
        assert tokens == list(range(out)) and steps == sorted(set(steps))
