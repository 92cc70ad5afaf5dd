"""slojudge: the one definition of SLO verdicts and service gain (router, simulator and
load generator all use it). Each fast path is checked against the per-token predicate
it must agree with, token by token."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slojudge
from slojudge import Call, WorkflowLedger, judge, value

PURE = settings(deadline=None)  # a busy shared machine must not fail a pure function on time


@PURE
@given(st.integers(1, 60), st.integers(1, 500))
def test_cumulative_tokens_spread_evenly(k: int, n: int) -> None:
    cum = slojudge.cumulative_tokens(k, n)
    assert len(cum) == k and cum[-1] == n
    per = [b - a for a, b in zip([0, *cum], cum, strict=False)]
    assert all(p >= 0 for p in per)
    if k <= n:
        assert max(per) - min(per) <= 1 and min(per) >= n // k
    else:
        assert per[:n] == [1] * n and sum(per[n:]) == 0


@PURE
@given(
    st.floats(-2.0, 30.0, allow_nan=False),
    st.sampled_from([0.0, 0.001, 0.02, 0.1, 0.0333]),
    st.integers(0, 400),
    st.integers(0, 300),
)
def test_a_chunk_counts_exactly_the_tokens_the_predicate_accepts(
    late: float, tpot: float, first: int, count: int
) -> None:
    brute = sum(slojudge.on_time(late, tpot, i) for i in range(first, first + count))
    assert slojudge.on_time_in_chunk(late, tpot, first, count) == brute


@PURE
@given(st.floats(0.0, 10.0, allow_nan=False), st.sampled_from([0.001, 0.02, 0.1, 0.0333]))
def test_first_on_time_index_is_the_boundary(late: float, tpot: float) -> None:
    i = slojudge.first_on_time_index(late, tpot)
    assert i is not None and slojudge.on_time(late, tpot, i)
    assert i == 0 or not slojudge.on_time(late, tpot, i - 1)


def test_on_time_at_the_exact_due_time_and_not_a_microsecond_later() -> None:
    assert slojudge.on_time(0.06, 0.02, 3)  # token 3 due at due0 + 60 ms, arriving then
    assert not slojudge.on_time(0.060001, 0.02, 3)
    assert slojudge.on_time_in_chunk(0.5, 0.0, 0, 10) == 0  # no TPOT: late is late for all
    assert slojudge.first_on_time_index(0.5, 0.0) is None


@PURE
@given(st.lists(st.tuples(st.floats(0.0, 0.2), st.integers(0, 5)), min_size=1, max_size=40))
def test_check_chunks_matches_token_by_token(chunks: list[tuple[float, int]]) -> None:
    times, counts, t = [], [], 0.0
    for gap, c in chunks:
        t += gap
        times.append(t)
        counts.append(c)
    due0, tpot = 0.3, 0.02
    chk = slojudge.check_chunks(times, counts, due0, tpot)
    per_token = [tm for tm, c in zip(times, counts, strict=True) for _ in range(c)]
    assert chk.tokens == len(per_token)
    assert chk.on_time == sum(slojudge.on_time(tm - due0, tpot, i) for i, tm in enumerate(per_token))
    assert chk.first_on_time == (bool(per_token) and per_token[0] - due0 <= slojudge.EPS)


def test_token_value_weighs_a_decode_token_as_eight_prefill_tokens() -> None:
    assert value(100, 10) == pytest.approx(100 * slojudge.PREFILL_WEIGHT + 10 * slojudge.DECODE_WEIGHT)
    assert slojudge.DECODE_WEIGHT / slojudge.PREFILL_WEIGHT == 8


def test_latency_gain_is_the_prompt_when_the_first_token_was_on_time_plus_on_time_tokens() -> None:
    on = Call(True, 100, 20, finished_at=3.0, on_time_tokens=20, first_on_time=True)
    v = judge("latency", 2.0, [on])
    assert v.met and v.tokens_met and v.deadline_met is None
    assert v.gain == pytest.approx(2.0 * value(100, 20)) == pytest.approx(v.gain_max)
    part = Call(True, 100, 20, finished_at=3.0, on_time_tokens=15, first_on_time=True)
    v = judge("latency", 2.0, [part])
    assert not v.met and v.gain == pytest.approx(2.0 * (100 + 15 * 8))
    slow_start = Call(True, 100, 20, finished_at=3.0, on_time_tokens=15, first_on_time=False)
    assert judge("latency", 2.0, [slow_start]).gain == pytest.approx(2.0 * 15 * 8)
    broken = Call(False, 100, 5, on_time_tokens=5, first_on_time=True, planned_output=20)
    v = judge("latency", 1.0, [broken])
    assert (
        not v.met and v.gain == pytest.approx(value(100, 5)) and v.gain_max == pytest.approx(value(100, 20))
    )
    # a latency tier with a deadline too: every token on time is not enough when it ends late
    v = judge("latency", 1.0, [on], due_at=2.5)
    assert v.tokens_met and v.deadline_met is False and not v.met


def test_deadline_and_best_effort_are_all_or_nothing() -> None:
    c = Call(True, 1000, 50, finished_at=19.0)
    assert judge("deadline", 2.0, [c], due_at=20.0).gain == pytest.approx(2.0 * value(1000, 50))
    late = judge("deadline", 2.0, [c], due_at=18.9)
    assert not late.met and late.deadline_met is False and late.gain == 0
    assert late.gain_max == pytest.approx(2.0 * value(1000, 50))
    failed = Call(False, 1000, 0, finished_at=1.0, planned_output=50)
    assert judge("deadline", 1.0, [failed], due_at=20.0).gain == 0
    assert judge("best_effort", 0.5, [c]).gain == pytest.approx(0.5 * value(1000, 50))
    assert judge("best_effort", 0.5, [failed]).gain == 0


def test_a_workflow_counts_only_if_its_last_call_is_in_time() -> None:
    calls = [Call(True, 100, 10, finished_at=t) for t in (3.0, 7.0, 11.0)]
    v = judge("workflow", 1.0, calls, due_at=12.0)
    assert v.met and v.gain == pytest.approx(3 * value(100, 10))
    assert judge("workflow", 1.0, calls, due_at=10.0).gain == 0
    bad = [*calls[:2], Call(False, 100, 0, planned_output=10)]
    assert judge("workflow", 1.0, bad, due_at=12.0).gain == 0


def test_bad_input_is_a_clear_error() -> None:
    c = Call(True, 1, 1, finished_at=0.0)
    with pytest.raises(ValueError, match="unknown SLO class"):
        judge("interactive", 1.0, [c])
    with pytest.raises(ValueError, match="needs its deadline"):
        judge("deadline", 1.0, [c])
    with pytest.raises(ValueError, match="at least one call"):
        judge("best_effort", 1.0, [])
    with pytest.raises(ValueError, match="one call"):
        judge("latency", 1.0, [c, c])


@PURE
@given(st.integers(0, 2**31))
def test_the_ledger_seeing_calls_one_by_one_nets_the_workflow_verdicts(seed: int) -> None:
    rnd = random.Random(seed)
    flows: dict[str, tuple[float, list[Call]]] = {}
    for w in range(rnd.randint(1, 12)):
        due = rnd.uniform(5.0, 20.0)
        calls = [
            Call(
                rnd.random() > 0.1,
                rnd.randint(1, 500),
                rnd.randint(0, 80),
                finished_at=rnd.uniform(0.0, 24.0),
            )
            for _ in range(rnd.randint(1, 5))
        ]
        flows[f"wf{w}"] = (due, calls)
    events = [(c.finished_at or 0.0, wid, c) for wid, (_, cs) in flows.items() for c in cs]
    events.sort(key=lambda e: e[0])  # calls of different workflows interleave
    ledger = WorkflowLedger()
    credited = forfeited = 0.0
    for now, wid, c in events:
        due = flows[wid][0]
        got, lost = ledger.call(wid, due, judge("workflow", 1.5, [c], due), now)
        assert got >= 0 and lost >= 0
        credited += got
        forfeited += lost
    expected = sum(judge("workflow", 1.5, cs, due).gain for due, cs in flows.values())
    assert credited - forfeited == pytest.approx(expected)


def test_the_ledger_forgets_workflows_long_past_their_deadline() -> None:
    ledger = WorkflowLedger(retain_s=60.0, max_workflows=1000)
    ok = judge("workflow", 1.0, [Call(True, 10, 1, finished_at=1.0)], 10.0)
    for i in range(50):
        ledger.call(f"w{i}", 10.0, ok, 1.0)
    assert len(ledger) == 50
    ledger.call("later", 200.0, ok, 100.0)  # 90 s after their deadline: the 50 are gone
    assert len(ledger) == 1
    small = WorkflowLedger(retain_s=3600.0, max_workflows=10)
    for i in range(30):  # above the size bound only workflows whose deadline passed may go
        small.call(f"w{i}", float(i), ok, float(i) + 0.5)
    assert len(small) <= 11
    with pytest.raises(ValueError):
        WorkflowLedger(retain_s=-1.0)
