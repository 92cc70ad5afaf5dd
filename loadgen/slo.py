"""Did a request (or a workflow) meet its SLO? docs/loadgen.md, "Metric definitions".

**Tokens per chunk.** A streamed chunk may carry several tokens (vLLM under load
does this), and a server's text does not say how many. The output token count ``n``
is taken from ``usage.completion_tokens`` (one per token-bearing chunk when the server
sends no usage) and spread over the ``k`` token-bearing chunks in order:

* ``k >= n``: token ``i`` arrived with chunk ``i`` (chunks past the ``n``-th carry none);
* ``k < n``: after chunk ``j`` (0-based), ``⌊(j+1)·n/k⌋`` tokens have arrived — an even
  spread, so every chunk carries ``⌊n/k⌋`` or ``⌈n/k⌉`` tokens.

A non-streaming response is one chunk that carries all ``n`` tokens.

**DSLO (per-token deadline).** Token ``i`` is due at ``send + TTFT + i·TPOT``. A
request meets it when it ended ``ok`` with at least one token and every token
arrived by its due time. For a chunk carrying tokens ``a..b`` at time ``t``, the
binding check is token ``a`` (the earliest due). Tokens on time = the tokens whose
own due time is not before their chunk's arrival (used for service gain).

**Mean-TPOT form** (``vllm bench serve``): ``ok``, ``ttft <= TTFT`` and, when
``n > 1``, ``(latency − ttft)/(n − 1) <= TPOT``, where ttft and latency run from send to
the first and the last chunk.

**Deadline.** ``ok`` and the last chunk (non-streaming: the body) by ``send + deadline``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadgen.records import CallRecord, Unit
from loadgen.tiers import TierSpec


def cumulative_tokens(k: int, n: int) -> list[int]:
    """Tokens arrived after each of ``k`` chunks, for ``n`` tokens in all (see module doc)."""
    if k <= 0 or n <= 0:
        return [0] * max(k, 0)
    if k >= n:
        return [min(j + 1, n) for j in range(k)]
    return [((j + 1) * n) // k for j in range(k)]


@dataclass(frozen=True, slots=True)
class TokenCheck:
    met: bool  # every token on time (and the request ended ok)
    on_time: int  # tokens that arrived by their own due time
    tokens: int


def check_tokens(rec: CallRecord, ttft_s: float, tpot_s: float) -> TokenCheck:
    """The DSLO check of one call (see module doc)."""
    n = rec.output_tokens
    times = rec.token_chunks
    if rec.sent is None or not times or n <= 0:
        return TokenCheck(False, 0, max(n, 0))
    cum = cumulative_tokens(len(times), n)
    met = rec.ok
    on_time = 0
    prev = 0
    base = rec.sent + ttft_s
    for t, c in zip(times, cum, strict=True):
        if c == prev:
            continue
        late_by = t - base  # token i is on time when late_by <= i * tpot
        if late_by <= prev * tpot_s + 1e-9:
            on_time += c - prev
        else:
            met = False
            first_ok = math.ceil(late_by / tpot_s - 1e-9) if tpot_s > 0 else c
            on_time += max(0, c - max(prev, first_ok))
        prev = c
    return TokenCheck(met, on_time, n)


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


def meets_deadline(rec: CallRecord, deadline_ms: float) -> bool:
    lat = latency(rec)
    return rec.ok and lat is not None and lat <= deadline_ms / 1000.0


@dataclass(frozen=True, slots=True)
class UnitVerdict:
    met: bool  # the unit meets its tier's SLO (the tier's primary attainment)
    met_dslo: bool | None  # latency tiers
    met_mean_tpot: bool | None  # latency tiers
    met_deadline: bool | None  # tiers with a deadline
    gain: float  # service gain, weighted
    gain_max: float  # the gain had everything been on time


def judge(unit: Unit, tier: TierSpec) -> UnitVerdict:
    """One unit against its tier. Service gain follows Tempo, times the
    tier weight: latency = output tokens on schedule; deadline = input + output tokens
    if in time; workflow = all its calls' input + output tokens if the last is in time;
    best effort = input + output tokens if completed."""
    calls = unit.calls
    w = tier.weight
    size = sum(c.input_tokens + max(c.output_tokens, c.max_tokens if not c.ok else 0) for c in calls)
    if tier.slo_class == "latency":
        rec = calls[0]
        assert tier.ttft_ms is not None and tier.tpot_ms is not None
        chk = check_tokens(rec, tier.ttft_ms / 1000.0, tier.tpot_ms / 1000.0)
        dl = meets_deadline(rec, tier.deadline_ms) if tier.deadline_ms is not None else None
        met = chk.met and (dl is None or dl)
        gmax = w * max(rec.output_tokens, rec.max_tokens if not rec.ok else 0)
        return UnitVerdict(met, chk.met, meets_mean_tpot(rec, tier), dl, w * chk.on_time, gmax)
    if tier.slo_class in ("deadline", "workflow"):
        assert tier.deadline_ms is not None
        start, finish = unit.start, unit.finish
        ok = all(c.ok for c in calls) and start is not None and finish is not None
        met = ok and finish is not None and start is not None and finish - start <= tier.deadline_ms / 1000.0
        return UnitVerdict(met, None, None, met, w * size if met else 0.0, w * size)
    ok = all(c.ok for c in calls)
    return UnitVerdict(ok, None, None, None, w * size if ok else 0.0, w * size)
