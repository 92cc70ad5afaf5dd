"""The fluid reference of a scenario (docs/policies.md §6, "The fluid reference").

Not an upper bound (a router can beat it: see :mod:`slorouter.sim.upper_bound` for one
no router can): what an ideal static partition sustains on mean lengths. It sizes the
``bins: auto`` partition and is reported next to the upper bound as a reference.

Each tier ``t`` runs on servers of its own at the largest batch ``B_t`` whose
steady-state step still meets its TPOT ``τ_t``. With ``p̄`` the mean prompt, ``n̄`` the
mean output and ``x̄ = E[n·(p + n/2)] / E[n]`` the time-weighted mean context of a decode
slot, a steady-state step of ``B`` decoding requests carries

* ``B`` decodes plus ``B/n̄`` prefill sequences (the requests replacing finished ones),
* ``B·x̄`` KV tokens and ``B·p̄/n̄`` prefill tokens,

so ``step(B) = c0 + c_batch·B·(1 + 1/n̄) + c_kv·B·x̄ + c_prefill·B·p̄/n̄`` and
``B_t = max{B ≤ max_num_seqs : step(B) ≤ τ_t, B·x̄ ≤ kv_capacity}``.
One request of tier t then costs ``n̄·step(B_t)/B_t`` server-seconds, and the bound is

    bound = 1 / Σ_t share_t · n̄ · step(B_t) / B_t      requests/s per server.

Best-effort tiers use ``B = max_num_seqs`` (KV permitting); deadline/workflow tiers use
``τ = deadline / n̄``. No queueing, no fragmentation, no slack wasted, every request
exactly on its SLO at the mean pace. A router exceeds it when a request's own deadlines
allow it a slower pace than its TPOT (a short output with an early first token), with
best-effort work, and at 90 % attainment by letting the costliest requests miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slorouter.models import fluid
from slorouter.models.latency import profile_limits
from slorouter.models.profile import StepProfile
from slorouter.sim.scenario import Scenario
from slorouter.sim.scenario_workload import mean_lengths
from slorouter.values import SloClass


@dataclass(frozen=True, slots=True)
class TierBound:
    name: str
    share: float
    tpot_s: float | None
    batch: int
    step_s: float
    cost_s: float  # server-seconds per request


@dataclass(frozen=True, slots=True)
class FluidReference:
    rps_per_server: float
    mean_prompt: float
    mean_output: float
    mean_context: float
    tiers: tuple[TierBound, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "rps_per_server": self.rps_per_server,
            "formula": "1 / sum_t share_t * n_out * step(B_t) / B_t; "
            "step(B) = c0 + c_batch*B*(1+1/n_out) + c_kv*B*ctx + c_prefill*B*n_prompt/n_out",
            "mean_prompt_tokens": self.mean_prompt,
            "mean_output_tokens": self.mean_output,
            "mean_context_tokens": self.mean_context,
            "tiers": {
                t.name: {
                    "share": t.share,
                    "tpot_ms": None if t.tpot_s is None else t.tpot_s * 1e3,
                    "batch": t.batch,
                    "step_ms": t.step_s * 1e3,
                    "server_s_per_request": t.cost_s,
                }
                for t in self.tiers
            },
        }


def steady_step(prof: StepProfile, b: int, mp: float, mo: float, ctx: float) -> float:
    return fluid.steady_step(prof.step, b, fluid.Lengths(mp, mo, ctx))


def max_batch(prof: StepProfile, tau: float | None, mp: float, mo: float, ctx: float) -> int:
    return fluid.max_batch(prof.step, profile_limits(prof), tau, fluid.Lengths(mp, mo, ctx))


def fluid_reference(scn: Scenario) -> FluidReference:
    mp, mo, ctx = mean_lengths(scn)
    ln = fluid.Lengths(mp, mo, ctx)
    prof = scn.profile
    limits = profile_limits(prof)
    total = sum(t.share for t in scn.tiers)
    tiers: list[TierBound] = []
    per_req = 0.0
    for t in scn.tiers:
        share = t.share / total
        tau: float | None
        if t.slo_class is SloClass.LATENCY and t.tpot_ms is not None:
            tau = t.tpot_ms / 1e3
        elif t.slo_class in (SloClass.DEADLINE, SloClass.WORKFLOW) and t.deadline_ms is not None:
            tau = t.deadline_ms / 1e3 / mo
        else:
            tau = None
        b, step, cost = fluid.tier_cost(prof.step, limits, tau, ln)
        tiers.append(TierBound(t.name, share, tau, b, step, cost))
        if b < 1:
            per_req = float("inf")
            continue
        per_req += share * cost
    rps = 0.0 if per_req == float("inf") or per_req <= 0 else 1.0 / per_req  # formula: slorouter.models.fluid
    return FluidReference(rps, mp, mo, ctx, tuple(tiers))


def auto_bins(scn: Scenario, servers: int, fb: FluidReference | None = None) -> dict[str, int]:
    """Servers per tier ∝ share × fluid cost (largest remainder; ≥ 1 each when possible)."""
    fb = fb or fluid_reference(scn)
    need = {t.name: t.share * t.cost_s for t in fb.tiers}
    tot = sum(need.values()) or 1.0
    exact = {k: servers * v / tot for k, v in need.items()}
    out = {k: int(v) for k, v in exact.items()}
    if servers >= len(out):
        for k in out:
            if out[k] == 0:
                out[k] = 1
    while sum(out.values()) > servers:
        k = max(out, key=lambda x: (out[x] - exact[x], out[x]))
        out[k] -= 1
    while sum(out.values()) < servers:
        k = max(out, key=lambda x: exact[x] - out[x])
        out[k] += 1
    return out
