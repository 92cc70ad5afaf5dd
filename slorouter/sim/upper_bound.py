"""A true upper bound on a scenario's goodput (docs/policies.md §6, "The upper bound").

The fluid reference (:mod:`slorouter.sim.bound`) is what an ideal static partition
sustains on mean lengths; a router can beat it (a short output with an early first token
may run slower than its TPOT; best effort; the 10 % a tier may miss). This bound cannot
be beaten by any router, clairvoyant or not, on the simulated engine
(:mod:`slorouter.sim.engine`, no step noise).

**Attribution.** Split every engine step's duration ``c0 + c_batch·B + c_kv·KV +
c_prefill·PF`` among requests: each of the ``B`` sequences in the step gets ``c0/B +
c_batch``, each request holding KV gets ``c_kv`` per token it holds, each prefill chunk
``c_prefill`` per token. The shares add up to the step, so the fleet's busy time equals
the sum of every request's share.

**Minimal share of one request** (prompt ``p``, output ``n``) that meets its SLO:

* it is in at least ``k = ceil(p/max_batched_tokens) + n − 1`` steps (prefill chunks, the
  last giving the first token, then one token per step), holds ``p + j − 1`` KV tokens
  in the step giving token ``j`` (``K = n·p + n(n−1)/2`` in all) and prefills ``p``
  tokens: ``own = c_batch·k + c_kv·K + c_prefill·p``;
* its ``c0`` share ``c0·Σ 1/B_s`` is smallest with the largest batches its deadlines
  allow. Its steps run one after another inside its window ``W`` (latency: ``TTFT +
  (n−1)·TPOT`` from arrival to the last token's deadline; deadline tiers: the deadline;
  best effort: unbounded). Every other sequence in a step holds at least ``κ`` KV tokens
  (``κ`` = the workload's shortest prompt: a decoding or a fully-prefilled sequence
  holds its prompt; only the one chunk at which the step's token budget runs out can
  hold less, at least 1), so ``dur_s ≥ f + c_kv·kv_r(s) + c_prefill·pf_r(s) + e·(B_s − 1)``
  with ``e = c_batch + c_kv·κ`` and ``f = c0 + c_batch − c_kv·(κ − 1)``. Hence
  ``Σ_s (B_s − 1) ≤ X = (W − k·f − c_kv·K − c_prefill·p) / e``; with ``B_s ≤ B_max``
  (``max_num_seqs``, and the KV capacity at ``κ`` tokens per other sequence), convexity
  of ``1/B`` gives ``Σ 1/B_s ≥ k / min(B_max, 1 + X/k)``;
* ``X < 0``, or a prefill that cannot give the first token within the TTFT even alone
  (``ceil(p/budget)·f + c_kv·p + c_prefill·p > TTFT``): the request can never meet its
  SLO (cost ``inf``).

* two more splits of ``c0`` are as valid: by KV held (a step holds at most the KV
  capacity ``C``: share ``≥ c0·K/C``) and by tokens computed (at most
  ``max_batched_tokens`` a step: share ``≥ c0·(p + n − 1)/budget``); so is any fixed mix
  ``λ`` of the three: ``cost_λ = own + c0·(λ_seq·k/B̂ + λ_kv·K/C + λ_tok·(p+n−1)/budget)``.

Every term grows with ``k``, with more KV and with more prefill (preemption), so the
minimum is at the values above.

**Rate bound.** Over a long run at ``R`` requests/s on ``m`` servers, the good
requests' shares fit in the busy time ``≤ m·T``. With attainment ``≥ a`` on every tier,
a tier may give up its ``1 − a`` most expensive requests (a clairvoyant router would):
``R·Σ_t share_t·∫_0^a Q_t(u) du ≤ m``, ``Q_t`` the quantile function of tier ``t``'s
``cost_λ``. The bound is ``1 / Σ_t share_t·∫_0^a Q_t`` requests/s per server, for the
``λ`` that makes it smallest. Short runs can pass more: :mod:`slorouter.sim.upper_bound_run`.

Lengths: the trace's rows, each equally likely (as the workload draws them); synthetic
(log-normal, independent) lengths: a grid of :data:`GRID` × :data:`GRID` mid-quantile
pairs (a quadrature of the distribution, deterministic). A tier with
several ``ttft_ms`` draws each equally often.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from slorouter.models.profile import StepProfile
from slorouter.sim.scenario import Scenario, TierSpec
from slorouter.sim.scenario_workload import length_sampler
from slorouter.values import Slo, SloClass

GRID = 200  # synthetic lengths: mid-quantiles per dimension
Arr = np.ndarray[Any, np.dtype[np.float64]]
Mask = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass(frozen=True, slots=True)
class StepFloor:
    """The per-step floor the derivation uses (module docs)."""

    c0: float
    c_batch: float
    c_kv: float
    c_prefill: float
    budget: int  # max_batched_tokens
    kv_capacity: int
    kappa: int  # KV tokens every other sequence in a step holds at least
    b_max: int

    @classmethod
    def of(cls, prof: StepProfile, min_prompt: int) -> StepFloor:
        c = prof.step
        kappa = max(1, min_prompt)
        b_kv = 1 + (prof.kv_capacity_tokens + kappa - 2) // kappa
        return cls(
            c.c0_s,
            c.c_batch_s,
            c.c_kv_s,
            c.c_prefill_s,
            max(1, prof.max_batched_tokens),
            prof.kv_capacity_tokens,
            kappa,
            max(1, min(prof.max_num_seqs, b_kv)),
        )


def _slack(fl: StepFloor, p: Arr, n: Arr, window: Arr) -> tuple[Arr, Arr, Arr, Arr]:
    """``(k, K, chunks, X)`` of the derivation for each request."""
    chunks = np.ceil(p / fl.budget)
    k = chunks + n - 1
    kv = n * p + n * (n - 1) / 2
    e = fl.c_batch + fl.c_kv * fl.kappa
    f = fl.c0 + fl.c_batch - fl.c_kv * (fl.kappa - 1)
    with np.errstate(invalid="ignore"):
        slack = window - k * f - fl.c_kv * kv - fl.c_prefill * p
        # e = 0 (no per-sequence cost): any batch fits a window that fits the steps
        x = slack / e if e > 0 else np.where(slack >= 0, np.inf, -1.0)
    return k, kv, chunks, x


@dataclass(frozen=True, slots=True)
class Shares:
    """Per request: its own work and the three floors of its ``c0`` share (steps)."""

    own: Arr  # c_batch·k + c_kv·K + c_prefill·p
    by_seqs: Arr  # k / B̂: Σ 1/B_s over its steps
    by_kv: Arr  # K / kv_capacity
    by_tokens: Arr  # (p + n − 1) / max_batched_tokens
    feasible: Mask

    def cost(self, c0: float, lam: tuple[float, float, float]) -> Arr:
        l1, l2, l3 = lam
        c = self.own + c0 * (l1 * self.by_seqs + l2 * self.by_kv + l3 * self.by_tokens)
        return np.where(self.feasible, c, np.inf)


def request_shares(fl: StepFloor, prompt: Arr, output: Arr, window: Arr, ttft: Arr) -> Shares:
    """The floors of each request's share, for a request meeting its SLO.

    ``window``: arrival to the last deadline (``inf``: best effort); ``ttft``: the first
    token's deadline from arrival (``inf``: none)."""
    k, kv, chunks, x = _slack(fl, prompt, output, window)
    with np.errstate(invalid="ignore"):
        b_hat = np.minimum(fl.b_max, 1 + np.maximum(x, 0.0) / k)
    f = fl.c0 + fl.c_batch - fl.c_kv * (fl.kappa - 1)
    first = chunks * f + (fl.c_kv + fl.c_prefill) * prompt
    return Shares(
        fl.c_batch * k + fl.c_kv * kv + fl.c_prefill * prompt,
        k / b_hat,
        kv / fl.kv_capacity,
        (prompt + output - 1) / fl.budget,
        (x >= 0) & (first <= ttft),
    )


def _windows(slo: Slo, output: Arr) -> tuple[Arr, Arr]:
    inf = np.full_like(output, np.inf)
    if slo.slo_class is SloClass.LATENCY and slo.ttft_s is not None:
        return slo.ttft_s + (output - 1) * (slo.tpot_s or 0.0), np.full_like(output, slo.ttft_s)
    if slo.slo_class in (SloClass.DEADLINE, SloClass.WORKFLOW) and slo.deadline_s is not None:
        return np.full_like(output, slo.deadline_s), inf
    return inf, inf


def _tier_slos(t: TierSpec) -> list[Slo]:
    ms = 1e-3
    tp = None if t.tpot_ms is None else t.tpot_ms * ms
    dl = None if t.deadline_ms is None else t.deadline_ms * ms
    return [Slo(t.slo_class, None if x is None else x * ms, tp, dl) for x in (t.ttft_ms or (None,))]


def _quantiles(mean: float, sigma: float, cap: int) -> Arr:
    """:data:`GRID` mid-quantiles of the workload's log-normal length (rounded and
    capped as :func:`slorouter.sim.scenario_workload.generate` draws them)."""
    mu = math.log(mean) - sigma * sigma / 2
    nd = NormalDist()
    z = np.asarray([nd.inv_cdf((i + 0.5) / GRID) for i in range(GRID)])
    return np.clip(np.rint(np.exp(mu + sigma * z)), 1, cap)


def _lengths(scn: Scenario) -> tuple[Arr, Arr]:
    """Every length pair the workload draws, each equally likely: the trace's rows, or
    the product grid of prompt and output mid-quantiles (synthetic: independent)."""
    tr = length_sampler(scn)
    if tr is not None:
        return np.asarray(tr[0], dtype=np.float64), np.asarray(tr[1], dtype=np.float64)
    w = scn.workload
    p = _quantiles(w.prompt.mean, w.prompt.sigma, w.prompt.max)
    n = _quantiles(w.output.mean, w.output.sigma, w.output.max)
    return np.repeat(p, GRID), np.tile(n, GRID)


def min_prompt(scn: Scenario) -> int:
    """The shortest prompt the workload can send (κ of the derivation)."""
    tr = length_sampler(scn)
    return 1 if tr is None else min(tr[0])


def kept_mean(costs: Arr, attainment: float) -> float:
    """``∫_0^a Q(u) du`` of the costs, each equally likely: their mean with the
    ``1 − a`` most expensive given for free (``inf`` if the kept part is infinite)."""
    m = costs.size
    whole = min(m, math.floor(attainment * m + 1e-9))
    frac = attainment * m - whole
    if whole == m:
        return float(costs.sum()) / m
    part = np.partition(costs, whole)  # part[:whole] are the `whole` cheapest
    s = float(part[:whole].sum()) if whole else 0.0
    if frac > 1e-9:
        s += frac * float(part[whole])
    return s / m


Lam = tuple[float, float, float]


def _simplex(step: float, around: Lam | None = None, radius: float = 1.0) -> list[Lam]:
    n = round(1 / step)
    out: list[Lam] = []
    for i in range(n + 1):
        for j in range(n + 1 - i):
            lam = (i * step, j * step, max(0.0, 1 - (i + j) * step))
            if around is None or max(abs(a - b) for a, b in zip(lam, around, strict=True)) <= radius:
                out.append(lam)
    return out


@dataclass(frozen=True, slots=True)
class TierUpper:
    name: str
    share: float
    kept_cost_s: float  # ∫_0^a Q_t: server-seconds per arrival of the tier
    infeasible: float  # fraction of the tier's requests that can never meet the SLO


@dataclass(frozen=True, slots=True)
class UpperBound:
    rps_per_server: float
    attainment: float
    lam: Lam  # weights of the c0 split: by sequences, by KV, by tokens
    kappa: int
    b_max: int
    sampled: bool
    tiers: tuple[TierUpper, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "rps_per_server": self.rps_per_server,
            "attainment": self.attainment,
            "formula": "1 / sum_t share_t * int_0^a Q_t(u) du; Q_t: quantiles of the minimal server-s "
            "per request, own + c0*(l_seq*k/B_hat + l_kv*K/kv_capacity + l_tok*(p+n-1)/budget) "
            "(docs/policies.md, the upper bound)",
            "c0_split": {"by_sequences": self.lam[0], "by_kv": self.lam[1], "by_tokens": self.lam[2]},
            "kappa_tokens": self.kappa,
            "max_batch": self.b_max,
            "lengths": "quantile grid" if self.sampled else "trace",
            "tiers": {
                t.name: {
                    "share": t.share,
                    "kept_server_s_per_request": t.kept_cost_s,
                    "infeasible_fraction": t.infeasible,
                }
                for t in self.tiers
            },
        }


def _tier_shares(scn: Scenario, fl: StepFloor) -> list[tuple[TierSpec, float, Shares]]:
    prompt, output = _lengths(scn)
    total = sum(t.share for t in scn.tiers)
    out = []
    for t in scn.tiers:
        parts = [request_shares(fl, prompt, output, *_windows(slo, output)) for slo in _tier_slos(t)]
        sh = Shares(*(np.concatenate([getattr(x, f) for x in parts]) for f in Shares.__slots__))
        out.append((t, t.share / total, sh))
    return out


def upper_bound(scn: Scenario, attainment: float = 0.9) -> UpperBound:
    """The bound on goodput per server at ``attainment`` on every tier (module docs).

    Every split ``λ`` of ``c0`` gives a bound; the tightest of a grid (step 0.2, then
    0.05 around the best) is returned."""
    if not 0 < attainment <= 1:
        raise ValueError("attainment must be in (0, 1]")
    fl = StepFloor.of(scn.profile, min_prompt(scn))
    tiers = _tier_shares(scn, fl)

    def per_request(lam: Lam) -> float:
        return sum(w * kept_mean(sh.cost(fl.c0, lam), attainment) for _, w, sh in tiers if w > 0)

    cache: dict[Lam, float] = {}

    def best(cands: list[Lam]) -> Lam:
        for lam in cands:
            key: Lam = (round(lam[0], 6), round(lam[1], 6), round(lam[2], 6))
            if key not in cache:
                cache[key] = per_request(key)
        return max(cache, key=lambda k: cache[k])

    lam = best(_simplex(0.2))
    lam = best(_simplex(0.05, lam, 0.2))
    cost = cache[lam]
    rps = 0.0 if not cost < math.inf else (math.inf if cost <= 0 else 1.0 / cost)
    return UpperBound(
        rps,
        attainment,
        lam,
        fl.kappa,
        fl.b_max,
        length_sampler(scn) is None,
        tuple(
            TierUpper(t.name, w, kept_mean(sh.cost(fl.c0, lam), attainment), 1.0 - float(sh.feasible.mean()))
            for t, w, sh in tiers
        ),
    )
