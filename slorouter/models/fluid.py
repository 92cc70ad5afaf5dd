"""The fluid model of one engine server (docs/policies.md §6): how many requests of a tier a
server sustains when its steady-state step just meets the tier's TPOT.

With ``p̄`` the mean prompt, ``n̄`` the mean output and ``x̄ = E[n·(p + n/2)] / E[n]`` the
time-weighted mean context of a decode slot, a steady-state step of ``B`` decoding
requests carries ``B`` decodes plus ``B/n̄`` prefill sequences, ``B·x̄`` KV tokens and
``B·p̄/n̄`` prefill tokens::

    step(B) = c0 + c_batch·B·(1 + 1/n̄) + c_kv·B·x̄ + c_prefill·B·p̄/n̄
    B_t     = max{B ≤ max_num_seqs : step(B) ≤ τ_t, B·x̄ ≤ kv_capacity}
    cost_t  = n̄ · step(B_t) / B_t      server-seconds per request

Used by the fluid upper bound of the fleet simulator (:mod:`slorouter.fleetsim.bound`) and by
the scaling decisions (:mod:`slorouter.autoscale`).
"""

from __future__ import annotations

from dataclasses import dataclass

from slorouter.models.static import EngineLimits, LinearStep


@dataclass(frozen=True, slots=True)
class Lengths:
    mean_prompt: float
    mean_output: float
    mean_context: float  # E[n·(p + n/2)] / E[n]


def steady_step(c: LinearStep, b: int, ln: Lengths) -> float:
    mp, mo, ctx = ln.mean_prompt, ln.mean_output, ln.mean_context
    return c.c0_s + c.c_batch_s * b * (1 + 1 / mo) + c.c_kv_s * b * ctx + c.c_prefill_s * b * mp / mo


def max_batch(c: LinearStep, lim: EngineLimits, tau: float | None, ln: Lengths) -> int:
    """Largest batch whose steady-state step meets ``tau`` (``None``: no TPOT); 0 if none."""
    top = min(lim.max_num_seqs, int(lim.kv_capacity_tokens // max(ln.mean_context, 1.0)))
    if tau is None:
        return max(1, top)
    lo, hi = 0, top
    while lo < hi:  # step() is increasing in B
        mid = (lo + hi + 1) // 2
        if steady_step(c, mid, ln) <= tau:
            lo = mid
        else:
            hi = mid - 1
    return lo


def tier_cost(c: LinearStep, lim: EngineLimits, tau: float | None, ln: Lengths) -> tuple[int, float, float]:
    """``(B_t, step(B_t), cost_t)``; cost is ``inf`` when no batch meets ``tau``."""
    b = max_batch(c, lim, tau, ln)
    if b < 1:
        return 0, float("inf"), float("inf")
    step = steady_step(c, b, ln)
    return b, step, ln.mean_output * step / b
