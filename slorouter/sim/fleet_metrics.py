"""Per-request records of a fleet simulation and their summary (the definitions of
docs/loadgen.md, "Metric definitions", which the load generator measures too).

* **DSLO attainment** (per tier and overall): requests whose every output token ``i``
  arrived by ``arrival + TTFT + i·TPOT`` / **all arrivals** (rejected, failed and
  unfinished requests count as misses). Deadline/workflow tiers: finished by the
  deadline. Best effort: finished, and started (dispatched) no later than 10 s after the
  last arrival — a rate at which best-effort work piles up in the router queue, to be
  served only once arrivals stop, is not sustainable and does not count.
* **Mean-TPOT attainment**: TTFT met and ``(latency − ttft)/(n_out − 1) ≤ TPOT`` (the
  ``vllm bench serve`` form), same denominator.
* **Misses by cause**: of the finished requests that missed their DSLO, ``ttft`` (the
  first token came after the TTFT deadline), ``pace`` (a later token came after its
  deadline) and ``backlog`` (best effort started only after arrivals ended, above);
  rejected, failed and unfinished requests are counted as such.
* **The miss log** (:func:`missed`, ``slorouter simulate --misses OUT``): every request
  that missed, with its lengths, cause, queue wait, TTFT, the server it ran on (and that
  server's configured tier), the load it was placed at and the policy's reason.
* **Queue wait**: time from arrival to (last) dispatch — what the router's admission
  queue held the request — p50/p90/p99 over dispatched requests.
* TTFT / mean-TPOT p50/p90/p99 over finished requests; goodput = requests meeting their
  DSLO per second of arrivals (per server); server-seconds per good request, for the
  whole fleet and for busy servers only (what a fleet that gives idle servers back pays).
* **Service gain** (``service_gain``, ``service_gain_max``, ``service_gain_ratio`` per tier
  and overall): :func:`slojudge.judge` applied to each request's record — the function
  the router and the load generator use. Latency: the prompt if the first token was on
  time plus the output tokens on schedule (``Records.on_time``, counted by
  :func:`on_time_tokens` with slojudge's per-token predicate); deadline/workflow: all or
  nothing by the deadline; best effort: when finished and not ``backlog``. Unfinished,
  rejected and failed requests gain nothing. Needs the workload (``summarize(...,
  workload=)``); without it the three keys are None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import slojudge
from slorouter.sim.scenario_workload import Workload
from slorouter.values import SloClass

UNFINISHED, OK, REJECTED, ERROR = 0, 1, 2, 3


@dataclass(slots=True)
class Records:
    n: int
    status: list[int] = field(init=False)
    ttft: list[float] = field(init=False)
    tpot: list[float] = field(init=False)
    dslo: list[bool] = field(init=False)
    mean_ok: list[bool] = field(init=False)
    ttft_miss: list[bool] = field(init=False)
    backlog: list[bool] = field(init=False)  # best effort started only after arrivals ended
    wait: list[float] = field(init=False)
    backend: list[str | None] = field(init=False)  # where it was (last) dispatched
    decision: list[str] = field(init=False)  # the policy's reason for the last decision
    dispatch_load: list[tuple[int, int, int] | None] = field(init=False)  # (running, kv, prefill)
    finished_at: list[float] = field(init=False)  # the step end that gave the last token
    on_time: list[int] = field(init=False)  # latency: output tokens on schedule (on_time_tokens)
    first_on_time: list[bool] = field(init=False)  # latency: the first token by arrival + TTFT

    def __post_init__(self) -> None:
        self.status = [UNFINISHED] * self.n
        self.ttft = [math.nan] * self.n
        self.tpot = [math.nan] * self.n
        self.dslo = [False] * self.n
        self.mean_ok = [False] * self.n
        self.ttft_miss = [False] * self.n
        self.backlog = [False] * self.n
        self.wait = [math.nan] * self.n
        self.backend = [None] * self.n
        self.decision = [""] * self.n
        self.dispatch_load = [None] * self.n
        self.finished_at = [math.nan] * self.n
        self.on_time = [0] * self.n
        self.first_on_time = [False] * self.n


def on_time_tokens(
    ends: Sequence[float], segs: Iterable[tuple[int, int, int]], due0: float, tpot: float
) -> int:
    """Output tokens of one request that arrived on schedule, from its segments: token
    ``i0 + j`` of segment ``(s0, i0, n)`` arrived at ``t = ends[s0 + j]`` and is on
    schedule when ``t − due0 <= i·tpot + EPS`` — :func:`slojudge.on_time`, evaluated here
    in the same float operations (inlined, or vectorized for long segments). The request
    met its per-token deadlines when this equals its output length."""
    eps = slojudge.EPS
    good = 0
    for s0, i0, n in segs:
        if n <= 0:
            continue
        if n <= 48:
            for j in range(n):
                if ends[s0 + j] - due0 <= (i0 + j) * tpot + eps:
                    good += 1
        else:
            late = np.asarray(ends[s0 : s0 + n], dtype=np.float64) - due0
            good += int(np.count_nonzero(late <= np.arange(i0, i0 + n) * tpot + eps))
    return good


def request_verdicts(rec: Records, wl: Workload) -> list[slojudge.Verdict]:
    """:func:`slojudge.judge` of every request, from its record (see the module doc)."""
    out: list[slojudge.Verdict] = []
    for rid in range(rec.n):
        tier = wl.variant[rid]
        slo = tier.slo
        ok = rec.status[rid] == OK
        if slo.slo_class is SloClass.BEST_EFFORT and rec.backlog[rid]:
            ok = False
        fin = rec.finished_at[rid]
        call = slojudge.Call(
            ok=ok,
            prompt_tokens=wl.prompt[rid],
            output_tokens=wl.output[rid] if rec.status[rid] == OK else 0,
            finished_at=None if math.isnan(fin) else fin,
            on_time_tokens=rec.on_time[rid],
            first_on_time=rec.first_on_time[rid],
            planned_output=wl.output[rid],
        )
        due = None if slo.deadline_s is None else wl.arrival[rid] + slo.deadline_s
        out.append(slojudge.judge(slo.slo_class.value, tier.weight, [call], due))
    return out


def _pcts(x: np.ndarray[Any, Any]) -> dict[str, float | None]:
    if x.size == 0:
        return {"p50": None, "p90": None, "p99": None}
    p = np.percentile(x, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def _gain(
    gains: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None, idx: np.ndarray[Any, Any]
) -> dict[str, Any]:
    if gains is None:
        return {"service_gain": None, "service_gain_max": None, "service_gain_ratio": None}
    g, gmax = float(gains[0][idx].sum()), float(gains[1][idx].sum())
    return {"service_gain": g, "service_gain_max": gmax, "service_gain_ratio": g / gmax if gmax else None}


def _group(rec: Records, idx: np.ndarray[Any, Any], span_s: float, servers: int) -> dict[str, Any]:
    st = np.asarray(rec.status)[idx]
    ttft = np.asarray(rec.ttft)[idx]
    tpot = np.asarray(rec.tpot)[idx]
    dslo = np.asarray(rec.dslo, dtype=bool)[idx]
    mean_ok = np.asarray(rec.mean_ok, dtype=bool)[idx]
    ttft_miss = np.asarray(rec.ttft_miss, dtype=bool)[idx]
    backlog = np.asarray(rec.backlog, dtype=bool)[idx]
    wait = np.asarray(rec.wait)[idx]
    n = int(idx.size)
    good = int(dslo.sum())
    missed = (st == OK) & ~dslo
    return {
        "arrivals": n,
        "finished": int((st == OK).sum()),
        "rejected": int((st == REJECTED).sum()),
        "errors": int((st == ERROR).sum()),
        "unfinished": int((st == UNFINISHED).sum()),
        "dslo_attainment": good / n if n else None,
        "mean_tpot_attainment": float(mean_ok.sum()) / n if n else None,
        "good": good,
        "goodput_rps": good / span_s if span_s > 0 else None,
        "goodput_rps_per_server": good / span_s / servers if span_s > 0 else None,
        "ttft_s": _pcts(ttft[~np.isnan(ttft)]),
        "tpot_s": _pcts(tpot[~np.isnan(tpot)]),
        "misses": {
            "ttft": int((missed & ttft_miss).sum()),
            "pace": int((missed & ~ttft_miss & ~backlog).sum()),
            "backlog": int((missed & backlog).sum()),
        },
        "queue_wait_s": _pcts(wait[~np.isnan(wait)]),
    }


def summarize(
    rec: Records,
    tier_of: list[int],
    tier_names: list[str],
    *,
    servers: int,
    span_s: float,
    makespan_s: float,
    busy_server_s: float,
    workload: Workload | None = None,
) -> dict[str, Any]:
    tiers = np.asarray(tier_of)
    allidx = np.arange(rec.n)
    gains = None
    if workload is not None:
        vs = request_verdicts(rec, workload)
        gains = (np.asarray([v.gain for v in vs]), np.asarray([v.gain_max for v in vs]))
    overall = _group(rec, allidx, span_s, servers) | _gain(gains, allidx)
    good = overall["good"]
    overall["server_seconds_per_good"] = servers * makespan_s / good if good else None
    overall["busy_server_seconds_per_good"] = busy_server_s / good if good else None
    per_tier = {}
    for i, name in enumerate(tier_names):
        idx = np.nonzero(tiers == i)[0]
        per_tier[name] = _group(rec, idx, span_s, servers) | _gain(gains, idx)
    att = [v["dslo_attainment"] for v in per_tier.values() if v["arrivals"]]
    return {
        "overall": overall,
        "tiers": per_tier,
        "min_tier_dslo_attainment": min(att) if att else None,
        "servers": servers,
        "span_s": span_s,
        "makespan_s": makespan_s,
        "busy_server_s": busy_server_s,
    }


_STATUS = {UNFINISHED: "unfinished", REJECTED: "rejected", ERROR: "error"}


def miss_cause(rec: Records, rid: int) -> str | None:
    """Why request ``rid`` missed its DSLO (None: it did not)."""
    st = rec.status[rid]
    if st != OK:
        return _STATUS[st]
    if rec.dslo[rid]:
        return None
    if rec.backlog[rid]:
        return "backlog"
    return "ttft" if rec.ttft_miss[rid] else "pace"


def _num(x: float, nd: int = 4) -> float | None:
    return None if math.isnan(x) else round(x, nd)


def missed(
    rec: Records,
    arrival: list[float],
    prompt: list[int],
    output: list[int],
    tier: list[str],
    tier_of_backend: dict[str, str],
) -> list[dict[str, Any]]:
    """One row per request that missed its DSLO, in arrival order (see module docs)."""
    rows: list[dict[str, Any]] = []
    for rid in range(rec.n):
        cause = miss_cause(rec, rid)
        if cause is None:
            continue
        bid = rec.backend[rid]
        load = rec.dispatch_load[rid]
        rows.append(
            {
                "rid": rid,
                "tier": tier[rid],
                "cause": cause,
                "arrival_s": round(arrival[rid], 4),
                "prompt_tokens": prompt[rid],
                "output_tokens": output[rid],
                "queue_wait_s": _num(rec.wait[rid]),
                "ttft_s": _num(rec.ttft[rid]),
                "backend": bid,
                "backend_tier": None if bid is None else tier_of_backend.get(bid),
                "running_at_dispatch": None if load is None else load[0],
                "prefill_backlog_at_dispatch": None if load is None else load[2],
                "decision": rec.decision[rid],
            }
        )
    return rows
