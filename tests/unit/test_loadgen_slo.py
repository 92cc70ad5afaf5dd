"""Per-token deadline (DSLO), mean-TPOT and deadline judgements on constructed records
(the load generator's records mapped onto slojudge; slojudge itself: test_slojudge.py)."""

from __future__ import annotations

import pytest

import slojudge
from loadgen import slo
from loadgen.records import CallRecord, Unit
from loadgen.tiers import TierSpec

LAT = TierSpec("chat", "latency", ttft_ms=200, tpot_ms=20)


def rec(
    chunks: list[float], *, n: int | None = None, status: str = "ok", sent: float = 1.0, lead: int = 0
) -> CallRecord:
    r = CallRecord(
        rid=0,
        unit=0,
        call=0,
        tier="chat",
        stream=True,
        prompt_tokens=10,
        max_tokens=n or len(chunks),
        sched=sent,
    )
    r.sent = sent
    r.chunks = [sent + c for c in chunks]
    r.lead = lead
    r.status = status
    r.usage_completion = n
    r.end = r.chunks[-1] if r.chunks else None
    return r


def test_every_token_just_in_time_meets_dslo() -> None:
    times = [0.2 + i * 0.02 - 1e-4 for i in range(50)]
    chk = slo.check_tokens(rec(times), 0.2, 0.02)
    assert chk.all_on_time and chk.on_time == 50 and chk.first_on_time


def test_one_late_token_misses_and_counts_the_rest() -> None:
    times = [0.2 + i * 0.02 - 1e-4 for i in range(50)]
    times[10] = 0.2 + 10 * 0.02 + 0.005  # token 10 is 5 ms late; later ones make it up
    times[10:] = sorted(times[10:])
    chk = slo.check_tokens(rec(times), 0.2, 0.02)
    assert not chk.all_on_time
    assert chk.on_time == 49


def test_multi_token_chunks_are_judged_by_their_earliest_token() -> None:
    # 10 tokens in 5 chunks of 2: chunk j carries tokens 2j, 2j+1; token 2j is due at 0.2 + 2j * 0.02
    on_time = [0.2 + 2 * j * 0.02 for j in range(5)]
    assert slo.check_tokens(rec(on_time, n=10), 0.2, 0.02).all_on_time
    late = list(on_time)
    late[3] += 0.001  # tokens 6 and 7: token 6 late by 1 ms, token 7 (due 20 ms later) on time
    chk = slo.check_tokens(rec(late, n=10), 0.2, 0.02)
    assert not chk.all_on_time and chk.on_time == 9


def test_role_chunk_is_not_a_token() -> None:
    # a role-only first chunk at 0.1 s, then 3 tokens: the role chunk does not shift token indices
    r = rec([0.1, 0.2, 0.22, 0.24], n=3, lead=1)
    assert slo.check_tokens(r, 0.2, 0.02).all_on_time
    assert slo.ttft(r) == pytest.approx(0.1)  # vLLM's TTFT counts the first chunk with choices


def test_failed_request_misses_but_keeps_its_on_time_tokens() -> None:
    r = rec([0.1, 0.12], status="error")
    assert slo.check_tokens(r, 0.2, 0.02).on_time == 2
    v = slo.judge(Unit(0, "chat", 1.0, [r]), LAT)
    assert not v.met and not v.met_dslo
    assert v.gain == pytest.approx(slojudge.value(10, 2))  # what was streamed on time was served


def test_stall_separates_dslo_from_mean_tpot() -> None:
    # 5 fast tokens, a 400 ms stall, 95 fast tokens: mean TPOT ~ 14 ms <= 20, but token 5 is late
    times = [0.05 + 0.01 * i for i in range(5)] + [0.05 + 0.04 + 0.4 + 0.01 * i for i in range(95)]
    r = rec(times)
    assert slo.meets_mean_tpot(r, LAT)
    assert not slo.check_tokens(r, 0.2, 0.02).all_on_time
    assert slo.judge(Unit(0, "chat", 1.0, [r]), LAT).met is False


def test_mean_tpot_is_vllm_formula() -> None:
    r = rec([0.1, 0.3, 0.5], n=5)
    assert slo.mean_tpot(r) == pytest.approx((0.5 - 0.1) / 4)
    assert slo.latency(r) == pytest.approx(0.5)


def _unit(calls: list[CallRecord]) -> Unit:
    return Unit(0, "t", 0.0, calls, tuple(() for _ in calls))


def test_deadline_and_workflow_use_first_send_to_last_chunk() -> None:
    tier = TierSpec("tools", "deadline", deadline_ms=1000, weight=2.0)
    ok = rec([0.9], n=4)
    late = rec([1.1], n=4)
    assert slo.judge(_unit([ok]), tier).met
    v = slo.judge(_unit([late]), tier)
    assert not v.met and v.gain == 0 and v.gain_max == pytest.approx(2.0 * (10 * 1 + 4 * 8))
    wf = TierSpec("agents", "workflow", deadline_ms=1000)
    a, b = rec([0.3], n=2, sent=1.0), rec([0.5], n=2, sent=1.4)  # b ends at 1.9, 0.9 s after a's send
    assert slo.judge(_unit([a, b]), wf).met
    b2 = rec([0.7], n=2, sent=1.4)  # ends at 2.1: 1.1 s after the workflow began
    assert not slo.judge(_unit([a, b2]), wf).met
    b3 = rec([0.1], n=2, sent=1.4, status="rejected")
    assert not slo.judge(_unit([a, b3]), wf).met


def test_service_gain_counts_on_time_tokens_times_weight() -> None:
    tier = TierSpec("chat", "latency", ttft_ms=200, tpot_ms=20, weight=3.0)
    times = [0.1, 0.12, 0.5, 0.52]  # tokens 2 and 3 are late (due 0.24, 0.26)
    v = slo.judge(_unit([rec(times)]), tier)
    # the 10 prompt tokens count (the first token was on time), and 2 of 4 output tokens
    assert v.gain == pytest.approx(3.0 * (10 * 1 + 2 * 8)) and v.gain_max == pytest.approx(3.0 * (10 + 4 * 8))
    late_start = slo.judge(_unit([rec([0.3, 0.32, 0.34, 0.36])]), tier)  # TTFT missed by 100 ms
    assert late_start.gain == 0  # token i is due at 0.2 + 0.02 i: all four are late
