"""The profiler's analysis: step observations from traces and the step-model fit, on
synthetic data whose coefficients are known (the simulated engine's own step clock)."""

from __future__ import annotations

import math
import random

import pytest

from slorouter.engine.model import EngineModel
from slorouter.engine.results import token_times
from slorouter.models.profile import StepProfile
from slorouter.models.static import LinearStep
from slorouter.tools.profile_fit import (
    StepObs,
    Trace,
    fallback_events,
    fit_step,
    level_stats,
    observations,
)


def closed_loop(
    step: LinearStep, concurrency: int, n_requests: int, prompt: int, output: int, coalesce: int = 1
) -> list[Trace]:
    """Drive the simulated engine's step clock like a closed-loop client; the client sees a
    chunk every ``coalesce`` tokens (as vLLM's API server does when it falls behind). Output
    lengths vary ±25 % so that requests drift apart and new prefills join running batches."""
    eng = EngineModel(StepProfile("synthetic", step, source="measured"), keep_history=True)
    rng = random.Random(concurrency)
    sent = 0
    now = 0.0
    starts: dict[int, float] = {}
    traces: list[Trace] = []
    for _ in range(concurrency):
        eng.submit(sent, prompt, rng.randint(3 * output // 4, 5 * output // 4), now)
        starts[sent] = now
        sent += 1
    while (end := eng.plan(now)) is not None:
        now = end
        res = eng.step()
        for f in res.finished:
            times = token_times(eng.step_ends, f.segments)
            events = [(t, float(i + 1)) for i, t in enumerate(times) if (i + 1) % coalesce == 0 or i == 0]
            if events[-1][1] != len(times):
                events.append((times[-1], float(len(times))))
            traces.append(Trace(starts[f.rid], f.prompt_tokens, tuple(events)))  # type: ignore[index]
            if sent < n_requests:
                eng.submit(sent, prompt, rng.randint(3 * output // 4, 5 * output // 4), now)
                starts[sent] = now
                sent += 1
    return traces


def rel(a: float, b: float) -> float:
    return abs(a - b) / b


TRUE = LinearStep(c0_s=0.019, c_batch_s=0.002, c_kv_s=0.0, c_prefill_s=3.0e-4)


def test_fit_recovers_the_simulated_engine_coefficients() -> None:
    levels = [closed_loop(TRUE, c, 3 * c, prompt=100, output=64) for c in (1, 2, 4, 8, 16)]
    fit = fit_step([observations(t) for t in levels])
    assert rel(fit.step.c0_s, TRUE.c0_s) < 0.05
    assert rel(fit.step.c_batch_s, TRUE.c_batch_s) < 0.05
    assert rel(fit.step.c_prefill_s, TRUE.c_prefill_s) < 0.10
    assert fit.step.c_kv_s == 0.0 and "c_kv_s" not in fit.terms  # not in the data: dropped


def test_fit_with_a_kv_term_and_multi_token_chunks() -> None:
    true = LinearStep(c0_s=0.010, c_batch_s=0.001, c_kv_s=2.0e-6, c_prefill_s=1.0e-4)
    levels = [
        closed_loop(true, c, 2 * c, prompt=p, output=48, coalesce=k)
        for c, p, k in ((1, 400, 1), (2, 50, 2), (4, 300, 3), (8, 20, 1), (16, 200, 2))
    ]  # prompts vary by level so kv is not a multiple of batch
    fit = fit_step([observations(t) for t in levels])
    for name in ("c0_s", "c_batch_s", "c_kv_s"):
        assert rel(getattr(fit.step, name), getattr(true, name)) < 0.10, name
    assert rel(fit.step.c_prefill_s, true.c_prefill_s) < 0.25
    for c, t in zip((1, 2, 4, 8, 16), levels, strict=True):  # mean ITL of a level = its mean step
        st = level_stats(c, t, wall_s=1.0)
        assert st.requests == 2 * c and st.errors == 0
        assert rel(st.mean_batch, c) < 0.25


def test_fit_is_non_negative_and_keeps_c0_positive() -> None:
    rng = random.Random(1)
    obs = []
    for _ in range(200):  # step time falls with batch: the LS slope would be negative
        b = rng.randint(1, 16)
        obs.append(StepObs(0.030 - 0.0005 * b + rng.gauss(0, 1e-4), 1.0, float(b), 100.0 * b, 0.0))
    fit = fit_step([obs])
    assert fit.step.c_batch_s == 0.0 and fit.step.c_kv_s == 0.0
    assert fit.step.c0_s > 0
    assert fit.terms == ()


def test_observations_of_two_lockstep_requests() -> None:
    # two requests decoding together, steps of 20 ms; B's chunks carry 2 tokens each
    a = Trace(0.0, 10, tuple((0.1 + 0.02 * i, float(i + 1)) for i in range(5)))
    b = Trace(0.0, 30, ((0.1, 1.0), (0.14, 3.0), (0.18, 5.0)))
    obs = observations([a, b])
    assert len(obs) == 4 + 2
    for o in obs:
        assert o.step_s == pytest.approx(0.02)
        assert o.batch == pytest.approx(2.0)
        assert o.prefill_tokens == 0
    assert sorted(o.steps for o in obs) == [1, 1, 1, 1, 2, 2]


def test_a_request_joining_is_counted_as_prefill_in_the_right_gap() -> None:
    a = Trace(0.0, 10, tuple((0.02 * (i + 1), float(i + 1)) for i in range(10)))  # tokens at .02 .. .20
    late = Trace(0.075, 50, ((0.1, 1.0), (0.12, 2.0), (0.14, 3.0)))  # prefilled in the step ending at .10
    obs = observations([a, late])
    with_prefill = [o for o in obs if o.prefill_tokens]
    assert len(with_prefill) == 1 and with_prefill[0].prefill_tokens == 50
    gaps_of_a = [o for o in obs if o.step_s == pytest.approx(0.02)]
    assert len(gaps_of_a) == 9 + 2


def test_level_stats_mean_itl_is_decode_time_over_decode_tokens() -> None:
    t1 = Trace(0.0, 10, ((0.5, 1.0), (0.6, 2.0), (0.9, 5.0)))  # 4 decode tokens in 0.4 s
    t2 = Trace(0.0, 10, ((0.3, 1.0), (0.5, 2.0)))  # 1 token in 0.2 s
    bad = Trace(0.0, 0, (), "HTTP 500")
    st = level_stats(2, [t1, t2, bad], wall_s=1.0)
    assert st.requests == 2 and st.errors == 1
    assert st.mean_itl_s == pytest.approx(0.6 / 5)
    assert st.mean_ttft_s == pytest.approx(0.4)
    assert st.tokens_per_s == pytest.approx(7.0)
    assert st.p50_itl_s == pytest.approx(0.1)  # steps: .1 (x1), .1 (x3), .2 (x1)
    assert st.p90_itl_s == pytest.approx(0.2)


def test_fallback_events_spread_the_final_count() -> None:
    assert fallback_events([1.0, 2.0, 3.0], 5) == ((1.0, 1.0), (2.0, 3.0), (3.0, 5.0))
    assert fallback_events([1.0], 4) == ((1.0, 4.0),)
    assert fallback_events([], 4) == ()


def test_fit_rejects_no_data() -> None:
    with pytest.raises(ValueError, match="no step observations"):
        fit_step([[]])
    assert math.isnan(level_stats(1, [], wall_s=1.0).mean_itl_s)
