"""Metrics of a run: the overall numbers under ``vllm bench serve``'s keys and
definitions, plus per-tier SLO attainment (``tiers``) and our overall SLO block.

vLLM-compatible keys (over the calls that were sent; ``completed`` = ended ok,
``failed`` = the others):
``duration, completed, failed, total_input_tokens, total_output_tokens,
request_throughput, request_goodput, output_throughput, total_token_throughput,
{mean,median,std,p50,p90,p95,p99}_{ttft,tpot,itl,e2el}_ms, input_lens, output_lens,
ttfts, itls, latencies, start_times, errors, max_output_tokens_per_s,
max_concurrent_requests``. Definitions as in vLLM: TTFT/ITL/E2EL from the chunk
times (ITL = gaps between consecutive chunks), TPOT = (E2EL − TTFT)/(n − 1) over
requests with n > 1, token counts from ``usage`` (vLLM tokenizes the text when a
server sends no usage; we count one token per chunk then). ``request_goodput`` is
vLLM's check (TTFT, mean TPOT and E2EL against limits) with each request's own tier
limits, per second; best-effort requests count when completed.

TTFT, TPOT and ITL statistics cover streamed calls only (a non-streaming response
has no first token of its own; its ``ttfts`` entry is its latency); E2EL covers all.

Differences, on purpose: ``ttfts``/``itls``/``latencies`` hold an entry per sent
call (0 / [] for failed ones, as vLLM does); ``max_output_tokens_per_s`` spreads a
multi-token chunk's tokens (vLLM counts one per chunk).

Attainment (``tiers.<name>.attainment``, ``overall.attainment``) divides by **all
arrivals**: rejected, failed, timed-out and cancelled units are misses. The unit is
a request, or a workflow for workflow tiers. ``overall`` covers the tiers that have an
SLO (best effort is reported on its own).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import slojudge
from loadgen import slo, stats
from loadgen.records import CallRecord, Unit
from loadgen.tiers import TierSpec


def call_metrics(calls: Sequence[CallRecord], duration: float, empty_none: bool = False) -> dict[str, Any]:
    """vLLM-style latency and throughput numbers over ``calls`` (``empty_none``: None, not 0,
    for a statistic without values, as in the per-tier blocks)."""
    sent = [c for c in calls if c.sent is not None]
    ok = [c for c in sent if c.ok]
    streamed = [c for c in ok if c.stream]
    ttfts = [t for c in streamed if (t := slo.ttft(c)) is not None]
    e2els = [t for c in ok if (t := slo.latency(c)) is not None]
    tpots = [t for c in streamed if (t := slo.mean_tpot(c)) is not None]
    itls = [b - a for c in streamed for a, b in zip(c.chunks, c.chunks[1:], strict=False)]
    tot_in = sum(c.input_tokens for c in ok)
    tot_out = sum(c.output_tokens for c in ok)
    dur = duration if duration > 0 else math.nan
    out: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(sent) - len(ok),
        "total_input_tokens": tot_in,
        "total_output_tokens": tot_out,
        "request_throughput": len(ok) / dur,
        "output_throughput": tot_out / dur,
        "total_token_throughput": (tot_in + tot_out) / dur,
    }
    out |= stats.summary_ms("ttft", ttfts, empty_none=empty_none)
    out |= stats.summary_ms("tpot", tpots, empty_none=empty_none)
    out |= stats.summary_ms("itl", itls, empty_none=empty_none)
    out |= stats.summary_ms("e2el", e2els, empty_none=empty_none)
    return out


def _peaks(ok: Sequence[CallRecord]) -> tuple[float, int]:
    """Peak output tokens in any one-second bucket, and peak concurrent requests."""
    if not ok:
        return 0.0, 0
    start = min(c.sent or 0.0 for c in ok)
    buckets: dict[int, int] = {}
    events: list[tuple[float, int]] = []
    for c in ok:
        times = c.token_chunks
        prev = 0
        for t, cum in zip(times, slojudge.cumulative_tokens(len(times), c.output_tokens), strict=True):
            b = int(t - start)
            buckets[b] = buckets.get(b, 0) + cum - prev
            prev = cum
        assert c.sent is not None and c.end is not None
        events.append((c.sent, 1))
        events.append((c.end, -1))
    events.sort()
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return float(max(buckets.values(), default=0)), peak


def vllm_block(units: Sequence[Unit], tiers: dict[str, TierSpec], duration: float) -> dict[str, Any]:
    calls = [c for u in units for c in u.calls]
    sent = [c for c in calls if c.sent is not None]
    ok = [c for c in sent if c.ok]
    out = call_metrics(calls, duration)
    good = sum(1 for c in ok if _vllm_good(c, tiers[c.tier]))
    out["request_goodput"] = good / duration if duration > 0 else math.nan
    peak_tok, peak_conc = _peaks(ok)
    out["max_output_tokens_per_s"] = peak_tok
    out["max_concurrent_requests"] = peak_conc
    out["input_lens"] = [c.input_tokens for c in sent]
    out["output_lens"] = [c.output_tokens if c.ok else 0 for c in sent]
    out["ttfts"] = [(slo.ttft(c) or 0.0) if c.ok else 0.0 for c in sent]
    out["itls"] = [
        [b - a for a, b in zip(c.chunks, c.chunks[1:], strict=False)] if c.ok else [] for c in sent
    ]
    out["latencies"] = [(slo.latency(c) or 0.0) if c.ok else 0.0 for c in sent]
    out["start_times"] = [c.sent for c in sent]
    out["errors"] = [c.error for c in sent]
    return out


def _vllm_good(c: CallRecord, tier: TierSpec) -> bool:
    t, lat, tp = slo.ttft(c), slo.latency(c), slo.mean_tpot(c) or 0.0
    if t is None or lat is None:
        return False
    if tier.ttft_ms is not None and t > tier.ttft_ms / 1000.0:
        return False
    if tier.tpot_ms is not None and tp > tier.tpot_ms / 1000.0:
        return False
    return not (tier.deadline_ms is not None and lat > tier.deadline_ms / 1000.0)


def tier_block(units: Sequence[Unit], tier: TierSpec, duration: float) -> dict[str, Any]:
    verdicts = [slo.judge(u, tier) for u in units]
    calls = [c for u in units for c in u.calls]
    n = len(units)

    def rate(flags: list[bool | None]) -> float | None:
        vals = [f for f in flags if f is not None]
        return sum(vals) / n if vals and n else None

    counts = {
        s: sum(1 for c in calls if c.status == s) for s in ("ok", "rejected", "error", "timeout", "cancelled")
    }
    gain = sum(v.gain for v in verdicts)
    gain_max = sum(v.gain_max for v in verdicts)
    met = sum(v.met for v in verdicts)
    out: dict[str, Any] = {
        "slo": tier.to_json(),
        "description": tier.describe(),
        "unit": "workflow" if tier.slo_class == "workflow" else "request",
        "arrivals": n,
        "requests": len(calls),
        "met": met,
        "attainment": met / n if n else None,
        "attainment_dslo": rate([v.met_dslo for v in verdicts]),
        "attainment_mean_tpot": rate([v.met_mean_tpot for v in verdicts]),
        "attainment_deadline": rate([v.met_deadline for v in verdicts]),
        "service_gain": gain,
        "service_gain_max": gain_max,
        "service_gain_ratio": gain / gain_max if gain_max else None,
        "goodput": met / duration if duration > 0 else None,
        "status": counts,
    }
    out |= call_metrics(calls, duration, empty_none=True)
    return out


def summarize(
    units: Sequence[Unit], tiers: dict[str, TierSpec], duration: float, expected: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(vLLM-compatible overall block, ``tiers`` block, ``overall`` SLO block).

    The ``tiers`` block lists the tiers in ``expected`` (the workload's mix) even when
    they had no arrivals (attainment None), and any other tier that had arrivals."""
    by_tier: dict[str, list[Unit]] = {name: [] for name in tiers}
    for u in units:
        by_tier.setdefault(u.tier, []).append(u)
    tier_out = {
        name: tier_block(us, tiers[name], duration) for name, us in by_tier.items() if us or name in expected
    }
    slo_units = [(u, tiers[u.tier]) for u in units if tiers[u.tier].has_slo]
    verdicts = [slo.judge(u, t) for u, t in slo_units]
    n = len(verdicts)
    lat = [v for v in verdicts if v.met_dslo is not None]
    worst = min(
        (
            (name, b["attainment"])
            for name, b in tier_out.items()
            if tiers[name].has_slo and b["attainment"] is not None
        ),
        key=lambda x: x[1],
        default=(None, None),
    )
    overall = {
        "arrivals": n,
        "met": sum(v.met for v in verdicts),
        "attainment": sum(v.met for v in verdicts) / n if n else None,
        "attainment_dslo_latency": sum(bool(v.met_dslo) for v in lat) / len(lat) if lat else None,
        "attainment_mean_tpot_latency": sum(bool(v.met_mean_tpot) for v in lat) / len(lat) if lat else None,
        "min_tier_attainment": worst[1],
        "min_tier": worst[0],
        "service_gain": sum(b["service_gain"] for b in tier_out.values()),
        "service_gain_max": sum(b["service_gain_max"] for b in tier_out.values()),
        "goodput": sum(v.met for v in verdicts) / duration if duration > 0 else None,
    }
    return vllm_block(units, tiers, duration), tier_out, overall
