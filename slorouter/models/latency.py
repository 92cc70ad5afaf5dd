"""The online latency model: step time per backend, learned from streamed responses.

Contract (what policies get, through :class:`~slorouter.models.base.LatencyView`):

* ``step_time(b, batch, kv, prefill)`` — the *q*-quantile (default p90, never the mean)
  of one engine step on backend ``b`` carrying ``batch`` running requests that hold
  ``kv`` KV tokens, plus ``prefill`` prompt tokens of chunked prefill.
* ``support(b, batch, kv)`` — how many (decayed) observations that prediction rests on;
  0 means it is the fitted/prior model only.
* ``linear(b)`` — conservative linear coefficients (mean fit × quantile ratio), for
  screening many servers cheaply; ``limits(b)`` — the engine's limits.

How it learns (per backend):

1. **Load buckets.** Every observed step gap ``(gap, running, kv)`` (from
   :attr:`Outcome.step_samples`) goes into the t-digest of its bucket: running requests
   exact up to 16 then 8 bins per doubling; KV tokens 4 bins per doubling from 512.
   Digests forget exponentially (``half_life_s``), so a backend that slows down moves
   its p90 within seconds of traffic.
2. **Least-squares fit** ``step ≈ c0 + c_batch·batch + c_kv·kv`` of the mean, on
   decayed normal equations plus fixed-weight pseudo-observations of the prior (a
   ridge toward the prior that keeps the fit sane when the data covers one load only);
   coefficients are kept ≥ 0. The prefill coefficient is not identifiable from decode
   gaps and stays the prior's.
3. **Quantile ratio.** A digest of ``gap / fit(batch, kv)`` gives the multiplier that
   turns the mean fit into the *q*-quantile; blended with the prior's ratio (1, or
   ``p90/mean`` of the profile's points) by support.

Prediction at a load: the fitted quantile (``fit × ratio``), blended with the bucket's
own quantile (shifted along the fit from the bucket's mean load to the query load) with
weight ``min(1, bucket mass / min_support)``; plus ``c_prefill·prefill``.

Updates are batched: at most ``samples_per_outcome`` evenly strided samples of one
outcome, grouped by bucket, one ``batch_update`` per bucket. Refits happen every
``refit_every`` outcomes per backend. Everything is O(1) in the number of requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slorouter.clock import Clock
from slorouter.models.digest import DecayingDigest
from slorouter.models.profile import StepProfile
from slorouter.models.static import EngineLimits, LinearStep
from slorouter.values import Outcome

Sample = tuple[float, int, int]  # (gap_s, running, kv_tokens)


@dataclass(frozen=True, slots=True)
class LatencySettings:
    quantile: float = 0.9
    half_life_s: float = 30.0  # forgetting of digests and of the fit
    decay_interval_s: float = 1.0
    min_support: float = 32.0  # bucket observations for full trust in the bucket
    samples_per_outcome: int = 64
    refit_every: int = 8  # outcomes (per backend) between least-squares refits
    prior_weight: float = 64.0  # pseudo-observations of the prior in the fit
    max_centroids: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise ValueError("quantile: must be in (0, 1)")
        if self.half_life_s <= 0 or self.min_support <= 0 or self.samples_per_outcome < 1:
            raise ValueError("half_life_s, min_support and samples_per_outcome must be > 0")


def bucket_key(batch: int, kv_tokens: int) -> int:
    """The load bucket of ``(batch, kv_tokens)`` (an int; see the module docs)."""
    b = batch if batch <= 16 else 16 + int(8.0 * math.log2(batch / 16.0))
    k = 0 if kv_tokens < 512 else 1 + int(4.0 * math.log2(kv_tokens / 512.0))
    return b * 256 + k


_KV_SCALE = 1e-3  # the fit works on kv/1000 for conditioning


class _Bucket:
    __slots__ = ("digest", "n", "stamp", "sum_b", "sum_kv")

    def __init__(self, digest: DecayingDigest, now: float) -> None:
        self.digest = digest
        self.n = 0.0
        self.sum_b = 0.0
        self.sum_kv = 0.0
        self.stamp = now

    def add(self, gaps: list[float], sb: float, skv: float, now: float, half_life: float) -> None:
        f = 0.5 ** ((now - self.stamp) / half_life)
        self.stamp = now
        self.n = self.n * f + len(gaps)
        self.sum_b = self.sum_b * f + sb
        self.sum_kv = self.sum_kv * f + skv
        self.digest.add(gaps, now)


class _State:
    """What the model knows of one backend."""

    __slots__ = (
        "buckets",
        "coef",
        "limits",
        "lin",
        "n_outcomes",
        "observations",
        "prior",
        "prior_ratio",
        "prior_sums",
        "ratio",
        "ratio_q",
        "source",
        "stamp",
        "sums",
    )

    def __init__(
        self, prior: LinearStep, limits: EngineLimits, prior_ratio: float, source: str, now: float
    ) -> None:
        self.prior = prior
        self.limits = limits
        self.prior_ratio = prior_ratio
        self.source = source
        self.coef = prior
        self.ratio_q = prior_ratio
        self.lin = prior.scaled(prior_ratio)
        self.buckets: dict[int, _Bucket] = {}
        self.ratio: DecayingDigest | None = None
        self.sums = [0.0] * 9  # decayed: XtX (6 upper entries) + Xty (3)
        self.prior_sums = [0.0] * 9
        self.stamp = now
        self.n_outcomes = 0
        self.observations = 0
        _add_sums(self.prior_sums, _prior_points(prior, limits))


def _prior_points(prior: LinearStep, limits: EngineLimits) -> list[tuple[float, float, float, float]]:
    """Pseudo-observations (weight, batch, kv, step) of the prior over a load grid."""
    pts: list[tuple[float, float, float, float]] = []
    top = max(1, limits.max_num_seqs)
    for b in sorted({1, 4, 16, 64, max(1, top // 2), top}):
        if b > top:
            continue
        for per in (256, 1024, 4096):
            kv = min(limits.kv_capacity_tokens, b * per)
            pts.append((1.0, float(b), float(kv), prior.at(b, kv)))
    return pts


def _add_sums(s: list[float], pts: Iterable[tuple[float, float, float, float]]) -> None:
    for w, b, kv, y in pts:
        k = kv * _KV_SCALE
        s[0] += w
        s[1] += w * b
        s[2] += w * k
        s[3] += w * b * b
        s[4] += w * b * k
        s[5] += w * k * k
        s[6] += w * y
        s[7] += w * b * y
        s[8] += w * k * y


def _solve(a: list[list[float]], y: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting (tiny systems)."""
    n = len(y)
    m = [[*row, y[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-18:
            return None
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                for k in range(c, n + 1):
                    m[r][k] -= f * m[c][k]
    return [m[i][n] / m[i][i] for i in range(n)]


def _fit(total: list[float]) -> tuple[float, float, float] | None:
    """Non-negative least squares on 3 features by an active set (drop negatives, refit)."""
    full = [[total[0], total[1], total[2]], [total[1], total[3], total[4]], [total[2], total[4], total[5]]]
    rhs = [total[6], total[7], total[8]]
    active = [0, 1, 2]
    for _ in range(3):
        sol = _solve([[full[i][j] for j in active] for i in active], [rhs[i] for i in active])
        if sol is None:
            return None
        coef = [0.0, 0.0, 0.0]
        for i, v in zip(active, sol, strict=True):
            coef[i] = v
        neg = [i for i in active if coef[i] < 0]
        if not neg:
            return coef[0], coef[1], coef[2]
        active = [i for i in active if i not in neg]
        if not active:
            return None
    return None


class OnlineLatency:
    """Per-backend online step-time model (implements ``LatencyView``); see module docs."""

    def __init__(
        self,
        clock: Clock,
        default_prior: LinearStep | None = None,
        default_limits: EngineLimits | None = None,
        *,
        settings: LatencySettings | None = None,
        default_ratio: float = 1.0,
        default_source: str = "default",
    ) -> None:
        self.clock = clock
        self.settings = settings or LatencySettings()
        self._default = _State(
            default_prior or LinearStep(),
            default_limits or EngineLimits(),
            default_ratio,
            default_source,
            clock.now(),
        )
        self._states: dict[str, _State] = {}
        self._priors: dict[str, tuple[LinearStep, EngineLimits, float, str]] = {}

    # -- configuration ---------------------------------------------------------------

    def set_prior(
        self,
        backend_id: str,
        prior: LinearStep,
        limits: EngineLimits,
        ratio: float = 1.0,
        source: str = "measured",
    ) -> None:
        """The prior of one backend (forgets what was learned about it)."""
        self._priors[backend_id] = (prior, limits, ratio, source)
        self._states.pop(backend_id, None)

    def _state(self, backend_id: str) -> _State:
        st = self._states.get(backend_id)
        if st is None:
            pr = self._priors.get(backend_id)
            d = self._default
            st = _State(*(pr or (d.prior, d.limits, d.prior_ratio, d.source)), self.clock.now())
            self._states[backend_id] = st
        return st

    # -- LatencyView -----------------------------------------------------------------

    def step_time(self, backend_id: str, batch: int, kv_tokens: int, prefill_tokens: int = 0) -> float:
        st = self._states.get(backend_id)
        if st is None:
            pr = self._priors.get(backend_id)
            lin = pr[0].scaled(pr[2]) if pr else self._default.lin
            return lin.at(batch, kv_tokens, prefill_tokens)
        lin = st.lin
        pred = lin.at(batch, kv_tokens, 0)
        if st.buckets:
            bk = st.buckets.get(bucket_key(batch, kv_tokens))
            if bk is not None and bk.n > 0:
                w = min(1.0, bk.n / self.settings.min_support)
                c = st.coef
                q = bk.digest.quantile(self.settings.quantile)
                shift = c.at(batch, kv_tokens) - c.at(round(bk.sum_b / bk.n), round(bk.sum_kv / bk.n))
                pred = w * max(0.0, q + shift) + (1.0 - w) * pred
        return pred + lin.c_prefill_s * prefill_tokens

    def prefill_time(self, backend_id: str, prompt_tokens: int) -> float:
        lin = self.linear(backend_id)
        n = self.limits(backend_id).prefill_chunks(prompt_tokens)
        return (
            n * (lin.c0_s + lin.c_batch_s)
            + lin.c_kv_s * prompt_tokens * (n + 1) / 2
            + (lin.c_prefill_s * prompt_tokens)
        )

    def support(self, backend_id: str, batch: int, kv_tokens: int) -> int:
        st = self._states.get(backend_id)
        if st is None or not st.buckets:
            return 0
        bk = st.buckets.get(bucket_key(batch, kv_tokens))
        return 0 if bk is None else int(bk.n)

    def linear(self, backend_id: str) -> LinearStep:
        st = self._states.get(backend_id)
        if st is not None:
            return st.lin
        pr = self._priors.get(backend_id)
        return pr[0].scaled(pr[2]) if pr else self._default.lin

    def limits(self, backend_id: str) -> EngineLimits:
        st = self._states.get(backend_id)
        if st is not None:
            return st.limits
        pr = self._priors.get(backend_id)
        return pr[1] if pr else self._default.limits

    # -- learning --------------------------------------------------------------------

    def observe_outcome(self, outcome: Outcome) -> None:
        """Tracker listener: learn from the step gaps of one finished request."""
        if outcome.backend is not None and outcome.step_samples:
            self.observe(outcome.backend, outcome.step_samples)

    def observe(self, backend_id: str, samples: Sequence[Sample]) -> None:
        """Learn from ``(gap_s, running, kv_tokens)`` samples of one backend (one batch)."""
        cfg = self.settings
        stride = max(1, -(-len(samples) // cfg.samples_per_outcome))
        now = self.clock.now()
        st = self._state(backend_id)
        groups: dict[int, tuple[list[float], list[int]]] = {}
        pts: list[tuple[float, float, float, float]] = []
        ratios: list[float] = []
        coef = st.coef
        for gap, running, kv in samples[::stride]:
            if not 0.0 < gap < 60.0 or running < 1:
                continue
            g = groups.get(bucket_key(running, kv))
            if g is None:
                g = groups[bucket_key(running, kv)] = ([], [0, 0])
            g[0].append(gap)
            g[1][0] += running
            g[1][1] += kv
            pts.append((1.0, float(running), float(kv), gap))
            mean = coef.at(running, kv)
            if mean > 0:
                ratios.append(gap / mean)
        if not pts:
            return
        for key, (gaps, (sb, skv)) in groups.items():
            bk = st.buckets.get(key)
            if bk is None:
                bk = st.buckets[key] = _Bucket(self._digest(now), now)
            bk.add(gaps, sb, skv, now, cfg.half_life_s)
        if st.ratio is None:
            st.ratio = self._digest(now)
        st.ratio.add(ratios, now)
        f = 0.5 ** ((now - st.stamp) / cfg.half_life_s)
        st.stamp = now
        st.sums = [v * f for v in st.sums]
        _add_sums(st.sums, pts)
        st.observations += len(pts)
        st.n_outcomes += 1
        if st.n_outcomes % cfg.refit_every == 1 or cfg.refit_every == 1:
            self._refit(st, now)

    def _digest(self, now: float) -> DecayingDigest:
        c = self.settings
        return DecayingDigest(now, c.half_life_s, c.decay_interval_s, c.max_centroids)

    def _refit(self, st: _State, now: float) -> None:
        cfg = self.settings
        w = cfg.prior_weight / max(1.0, st.prior_sums[0])
        total = [s + w * p for s, p in zip(st.sums, st.prior_sums, strict=True)]
        sol = _fit(total)
        if sol is not None:
            st.coef = LinearStep(sol[0], sol[1], sol[2] * _KV_SCALE, st.prior.c_prefill_s)
        if st.ratio is not None:
            m = st.ratio.mass(now)
            r = st.ratio.quantile(cfg.quantile)
            if m > 0 and not math.isnan(r):
                k = cfg.min_support
                st.ratio_q = max(0.5, (m * r + k * st.prior_ratio) / (m + k))
        st.lin = st.coef.scaled(st.ratio_q)

    def refit(self, backend_id: str) -> None:
        """Refit one backend now (normally done every ``refit_every`` outcomes)."""
        self._refit(self._state(backend_id), self.clock.now())

    def describe(self, backend_id: str) -> dict[str, Any]:
        """What the model believes about one backend, and on how much data."""
        st = self._states.get(backend_id)
        if st is None:
            st = self._state(backend_id)
        c, lin = st.coef, st.lin
        return {
            "source": st.source,
            "observations": st.observations,
            "outcomes": st.n_outcomes,
            "buckets": len(st.buckets),
            "quantile": self.settings.quantile,
            "ratio_q": st.ratio_q,
            "mean_fit": {"c0_s": c.c0_s, "c_batch_s": c.c_batch_s, "c_kv_s": c.c_kv_s},
            "conservative": {
                "c0_s": lin.c0_s,
                "c_batch_s": lin.c_batch_s,
                "c_kv_s": lin.c_kv_s,
                "c_prefill_s": lin.c_prefill_s,
            },
        }


def profile_ratio(profile: StepProfile) -> float:
    """The p90/mean ratio of a profile's measured points (1.0 without points)."""
    rs = [p.p90_itl_s / p.mean_itl_s for p in profile.points if p.p90_itl_s and p.mean_itl_s]
    return max(1.0, sum(rs) / len(rs)) if rs else 1.0


def profile_limits(profile: StepProfile) -> EngineLimits:
    return EngineLimits(profile.max_num_seqs, profile.kv_capacity_tokens, profile.max_batched_tokens)


def build_latency(
    clock: Clock,
    *,
    quantile: float = 0.9,
    profile: StepProfile | None = None,
    per_backend: Mapping[str, StepProfile] | None = None,
    settings: LatencySettings | None = None,
) -> OnlineLatency:
    """The wiring's entry point: a model seeded from ``profile`` (all backends) and
    ``per_backend`` profiles; without any, engine defaults marked ``source="default"``."""
    base = settings or LatencySettings()
    if base.quantile != quantile:
        base = LatencySettings(**{**_fields(base), "quantile": quantile})
    if profile is None:
        model = OnlineLatency(clock, settings=base)
    else:
        model = OnlineLatency(
            clock,
            profile.step,
            profile_limits(profile),
            settings=base,
            default_ratio=profile_ratio(profile),
            default_source=profile.source,
        )
    for bid, prof in (per_backend or {}).items():
        model.set_prior(bid, prof.step, profile_limits(prof), profile_ratio(prof), prof.source)
    return model


def _fields(s: LatencySettings) -> dict[str, Any]:
    return {k: getattr(s, k) for k in LatencySettings.__dataclass_fields__}
