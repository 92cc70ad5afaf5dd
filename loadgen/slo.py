"""Did a request (or a workflow) meet its SLO, and what service gain did it deliver?
docs/loadgen.md, "Metric definitions".

The definitions live in :mod:`slojudge`, shared with the router and the offline
simulator; this module maps the load generator's records onto them and adds
``vllm bench serve``'s mean-TPOT form.

**Tokens per chunk.** A streamed chunk may carry several tokens (vLLM under load
does this), and a server's text does not say how many. The output token count ``n``
is taken from ``usage.completion_tokens`` (one per token-bearing chunk when the server
sends no usage) and spread over the ``k`` token-bearing chunks in order
(:func:`slojudge.cumulative_tokens`): ``k >= n``: token ``i`` arrived with chunk ``i``;
``k < n``: an even spread. A non-streaming response is one chunk that carries all
``n`` tokens.

**DSLO (per-token deadline).** Token ``i`` is due at ``send + TTFT + i·TPOT``; a token is
on schedule when its chunk arrived by then (:mod:`slojudge.tokens`). A request meets it
when it ended ``ok`` with at least one token and every token was on schedule.

**Mean-TPOT form** (``vllm bench serve``): ``ok``, ``ttft <= TTFT`` and, when
``n > 1``, ``(latency − ttft)/(n − 1) <= TPOT``, where ttft and latency run from send to
the first and the last chunk.

**Deadline.** ``ok`` and the last chunk (non-streaming: the body) by ``send + deadline``;
a workflow: every call ``ok`` and the last by the first call's send + deadline.

**Service gain**: :mod:`slojudge.gain` (prompt tokens weigh 1, output tokens 8, times the
tier weight; latency: on-schedule tokens; deadline and workflow: all or nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import slojudge
from loadgen.records import CallRecord, Unit
from loadgen.tiers import TierSpec


def check_tokens(rec: CallRecord, ttft_s: float, tpot_s: float) -> slojudge.TokenCheck:
    """The per-token check of one call (see module doc); ``ok`` is not part of it."""
    n = rec.output_tokens
    times = rec.token_chunks
    if rec.sent is None or not times or n <= 0:
        return slojudge.TokenCheck(max(n, 0), 0, False)
    cum = slojudge.cumulative_tokens(len(times), n)
    counts = [b - a for a, b in zip([0, *cum], cum, strict=False)]
    return slojudge.check_chunks(times, counts, rec.sent + ttft_s, tpot_s)


def ttft(rec: CallRecord) -> float | None:
    """vLLM's TTFT: send to the first chunk (or to the body when not streaming)."""
    if rec.sent is None or not rec.chunks:
        return None
    return rec.chunks[0] - rec.sent


def latency(rec: CallRecord) -> float | None:
    """vLLM's latency (E2EL): send to the last chunk (or to the body)."""
    if rec.sent is None or not rec.chunks:
        return None
    return rec.chunks[-1] - rec.sent


def mean_tpot(rec: CallRecord) -> float | None:
    """vLLM's TPOT: (latency − ttft)/(n − 1); None when n <= 1 or the call failed."""
    t, lat, n = ttft(rec), latency(rec), rec.output_tokens
    if t is None or lat is None or n <= 1:
        return None
    return (lat - t) / (n - 1)


def meets_mean_tpot(rec: CallRecord, tier: TierSpec) -> bool:
    t = ttft(rec)
    if not rec.ok or t is None:
        return False
    if tier.ttft_ms is not None and t > tier.ttft_ms / 1000.0:
        return False
    tp = mean_tpot(rec)
    return not (tier.tpot_ms is not None and tp is not None and tp > tier.tpot_ms / 1000.0)


@dataclass(frozen=True, slots=True)
class UnitVerdict:
    met: bool  # the unit meets its tier's SLO (the tier's primary attainment)
    met_dslo: bool | None  # latency tiers
    met_mean_tpot: bool | None  # latency tiers
    met_deadline: bool | None  # tiers with a deadline
    gain: float  # service gain, weighted
    gain_max: float  # the gain had everything been on time


def _call(rec: CallRecord, tier: TierSpec) -> slojudge.Call:
    on_time, first_ok = 0, False
    if tier.slo_class == "latency":
        assert tier.ttft_ms is not None and tier.tpot_ms is not None
        chk = check_tokens(rec, tier.ttft_ms / 1000.0, tier.tpot_ms / 1000.0)
        on_time, first_ok = chk.on_time, chk.first_on_time
    return slojudge.Call(
        ok=rec.ok,
        prompt_tokens=rec.input_tokens,
        output_tokens=rec.output_tokens,
        finished_at=rec.end,
        on_time_tokens=on_time,
        first_on_time=first_ok,
        planned_output=rec.max_tokens,
    )


def judge(unit: Unit, tier: TierSpec) -> UnitVerdict:
    """One unit against its tier, by :func:`slojudge.judge`. A deadline runs from the
    unit's first send (a workflow's first call)."""
    calls = [_call(c, tier) for c in unit.calls]
    start = unit.start
    due = None
    if tier.deadline_ms is not None:
        due = (start if start is not None else unit.sched) + tier.deadline_ms / 1000.0
    v = slojudge.judge(tier.slo_class, tier.weight, calls, due)
    mean = meets_mean_tpot(unit.calls[0], tier) if tier.slo_class == "latency" else None
    return UnitVerdict(v.met, v.tokens_met, mean, v.deadline_met, v.gain, v.gain_max)
