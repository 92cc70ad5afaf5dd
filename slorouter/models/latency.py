"""The online latency model: per-token pace per backend, learned from streamed responses.

Contract (what policies get, through :class:`~slorouter.models.base.LatencyView`):

* ``step_time(b, batch, kv, prefill)`` — the *q*-quantile (default p90, never the mean)
  of the **pace** a resident of backend ``b`` sees at that load (``batch`` running
  requests holding ``kv`` KV tokens): one decode step plus the *typical* prefill
  interference per step (finished requests are replaced by new ones whose prompts ride
  along in chunks), over windows of ``window_tokens`` tokens — what a per-token
  deadline with catch-up cares about; plus ``prefill`` explicit prompt tokens in the
  step (``c_prefill · prefill``).
* ``support(b, batch, kv)`` — how many (decayed) observations that prediction rests on;
  0 means it is the fitted/prior model only; ``observations(b)`` — on the whole backend.
* ``linear(b)`` — conservative linear coefficients of the pace (the interference folded
  into ``c_batch_s``), for screening many servers cheaply; ``limits(b)`` — engine limits.

The model (per backend)::

    pace(batch, kv) = c0 + c_batch·batch + c_kv·kv + c_prefill·batch·ρ
    step_time       = ratio_q · pace  (blended with the load bucket's own quantile)

``ρ`` = prompt tokens per output token of the traffic (``Σ prompt / Σ output`` of all
finished requests, forgetting 10× slower than the step model, with 1,000 output tokens
of prior weight: each decode slot brings ``ρ`` prefill tokens per step on average). It is
one estimate for the whole fleet: a property of the traffic, not of a server.

How it learns:

1. **Windows.** Step samples ``(gap, running, kv)`` are averaged over windows of
   ``window_tokens`` (256) token-steps of the backend: a long response gives its own
   windows (at most ``samples_per_outcome``, evenly spread), shorter ones are pooled
   with the backend's other recent responses. A window's pace is what a per-token
   deadline with catch-up cares about: a prefill-carrying step is spread over it, as
   the slack of a request absorbs it, and the quantile below is over such windows.
2. **Load buckets.** Each window's pace goes into the t-digest of its bucket (running:
   exact up to 16, then 8 bins per doubling; KV: 4 bins per doubling from 512), with
   exponential forgetting (``half_life_s``): a backend that slows down moves its
   quantile within seconds of traffic.
3. **Least-squares fit** of the decode part ``gap − c_prefill·running·ρ ≈ c0 +
   c_batch·running + c_kv·kv`` on decayed normal equations, from every response at once
   (its mean pace and load, worth its tokens in windows), with a Gaussian prior on the
   coefficients (:func:`~slorouter.models.latency_fit.ridge`: a measured profile's
   within ±``prior_spread``, the engine defaults within ``default_spread``×; windows
   with a relative sd ``noise``): where the traffic explores a direction, seconds of
   data decide even on a slow CPU server; where it does not, the prior's shape holds;
   coefficients ≥ 0.
   ``c_prefill`` is not identifiable from gaps and stays the prior's.
4. **Quantile ratio** ``ratio_q``: the *q*-quantile of ``gap / pace`` (a digest),
   blended with the prior's ratio (1, or p90/mean of a profile's points), the prior
   worth ``min_support`` windows (a quantile needs more data than a mean).

Prediction at a load: ``ratio_q · pace``, blended with the bucket's quantile (shifted
along the fit from the bucket's mean load to the query load) by weight
``min(1, bucket mass / min_support)``.

Cost: a backend learns from at most ``max_batches_per_s`` outcomes a second (ρ from
all), one ``batch_update`` per touched bucket, a 3×3 refit every ``refit_every``
batches or ``refit_interval_s``, whichever comes first. Everything is O(1) in the number of requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from slorouter.clock import Clock
from slorouter.models.digest import DecayingDigest
from slorouter.models.latency_fit import KV_SCALE, add_sums, fit, ridge
from slorouter.models.profile import StepProfile
from slorouter.models.static import EngineLimits, LinearStep, first_token_base
from slorouter.values import Outcome

Sample = tuple[float, int, int]  # (gap_s, running, kv_tokens)


@dataclass(frozen=True, slots=True)
class LatencySettings:
    quantile: float = 0.9
    half_life_s: float = 30.0  # forgetting of digests and of the fit
    decay_interval_s: float = 2.0
    min_support: float = 32.0  # bucket observations for full trust in the bucket
    samples_per_outcome: int = 16  # windows used per outcome
    window_tokens: int = 256
    max_batches_per_s: float = 5.0  # per backend; 0 = learn from every outcome
    refit_every: int = 8  # outcomes (per backend) between least-squares refits ...
    refit_interval_s: float = 1.0  # ... or this long since the last one, if sooner
    prior_spread: float = 0.5  # a measured profile's coefficients: right within ±50 % (1 sd)
    default_spread: float = 10.0  # the engine defaults' coefficients: a guess within 10x
    noise: float = 0.1  # sd of a window's pace, relative to the mean pace observed
    max_centroids: int = 100
    ttft_prior_weight: float = 8.0  # requests' worth of "nothing beyond the step model"

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
        "eff_limits",
        "limits",
        "lin",
        "n_outcomes",
        "next_batch_at",
        "observations",
        "pool",
        "prior",
        "prior_ratio",
        "ratio",
        "ratio_q",
        "refit_at",
        "rho",
        "source",
        "stamp",
        "sums",
        "ttft",
        "ttft_stamp",
        "window_batches",
    )

    def __init__(
        self, prior: LinearStep, limits: EngineLimits, prior_ratio: float, source: str, now: float, rho: float
    ) -> None:
        self.prior = prior
        self.limits = limits
        self.prior_ratio = prior_ratio
        self.source = source
        self.coef = prior
        self.ratio_q = prior_ratio
        self.rho = rho  # prompt tokens per output token (the model's, applied to this state)
        self.lin = _pace(prior, rho, prior_ratio)
        self.buckets: dict[int, _Bucket] = {}
        self.ratio: DecayingDigest | None = None
        self.sums = [0.0] * 9  # decayed: XtX (6 upper entries) + Xty (3)
        self.stamp = now
        self.n_outcomes = 0
        self.observations = 0
        self.next_batch_at = -math.inf
        self.refit_at = -math.inf
        self.window_batches = 0
        self.pool = [0.0, 0.0, 0.0, 0.0]  # Σgap·n, Σrunning·n, Σkv·n, n of short responses
        # observed TTFT beyond the step model vs running at dispatch, decayed:
        # n, Σx, Σx², Σy, Σxy (x = running, y = excess seconds)
        self.ttft = [0.0, 0.0, 0.0, 0.0, 0.0]
        self.ttft_stamp = now
        self.eff_limits = limits  # limits + the learned TTFT excess (see observe_ttft)


def _mean(win: Sequence[Sample]) -> tuple[float, float, float]:
    """Mean (gap, running, kv) of consecutive samples (of at most 16, evenly spread)."""
    n = len(win)
    if n > 16:
        win = win[:: n // 16]
        n = len(win)
    g, r, kv = map(sum, zip(*win, strict=True))
    return g / n, r / n, kv / n


def _pace(coef: LinearStep, rho: float, ratio: float) -> LinearStep:
    """Conservative pace coefficients: the interference folded into ``c_batch_s``."""
    return LinearStep(
        coef.c0_s * ratio,
        (coef.c_batch_s + coef.c_prefill_s * rho) * ratio,
        coef.c_kv_s * ratio,
        coef.c_prefill_s * ratio,
    )


class OnlineLatency:
    """Per-backend online pace model (implements ``LatencyView``); see module docs."""

    def __init__(
        self,
        clock: Clock,
        default_prior: LinearStep | None = None,
        default_limits: EngineLimits | None = None,
        *,
        settings: LatencySettings | None = None,
        default_ratio: float = 1.0,
        default_source: str = "default",
        prefill_ratio: float = 0.0,
    ) -> None:
        self.clock = clock
        self.settings = settings or LatencySettings()
        self._default: tuple[LinearStep, EngineLimits, float, str] = (
            default_prior or LinearStep(),
            default_limits or EngineLimits(),
            default_ratio,
            default_source,
        )
        self._rho0 = prefill_ratio
        self._rho_applied = prefill_ratio
        self._rho_p = 0.0
        self._rho_n = 0.0
        self._rho_stamp = clock.now()
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

    def set_prefill_ratio(self, rho: float) -> None:
        """Prompt tokens per output token of the traffic (e.g. from a workload sample);
        learning from finished requests takes over with data."""
        self._rho0 = rho
        self._apply_rho(rho)

    def _apply_rho(self, rho: float) -> None:
        self._rho_applied = rho
        for st in self._states.values():
            st.rho = rho
            st.lin = _pace(st.coef, rho, st.ratio_q)

    def _state(self, backend_id: str) -> _State:
        st = self._states.get(backend_id)
        if st is None:
            pr = self._priors.get(backend_id) or self._default
            st = self._states[backend_id] = _State(*pr, self.clock.now(), self._rho_applied)
        return st

    # -- LatencyView -----------------------------------------------------------------

    def step_time(self, backend_id: str, batch: int, kv_tokens: int, prefill_tokens: int = 0) -> float:
        st = self._states.get(backend_id) or self._state(backend_id)
        lin = st.lin
        pred = lin.at(batch, kv_tokens, 0)
        if st.buckets:
            bk = st.buckets.get(bucket_key(batch, kv_tokens))
            if bk is not None and bk.n > 0:
                w = min(1.0, bk.n / self.settings.min_support)
                q = bk.digest.quantile(self.settings.quantile)
                shift = lin.at(batch, kv_tokens) - lin.at(round(bk.sum_b / bk.n), round(bk.sum_kv / bk.n))
                pred = w * max(0.0, q + shift / st.ratio_q) + (1.0 - w) * pred
        return pred + lin.c_prefill_s * prefill_tokens

    def prefill_time(self, backend_id: str, prompt_tokens: int) -> float:
        st = self._states.get(backend_id) or self._state(backend_id)
        c = st.coef.scaled(st.ratio_q)
        n = st.limits.prefill_chunks(prompt_tokens)
        return (
            n * (c.c0_s + c.c_batch_s)
            + c.c_kv_s * prompt_tokens * (n + 1) / 2
            + c.c_prefill_s * prompt_tokens
        )

    def support(self, backend_id: str, batch: int, kv_tokens: int) -> int:
        st = self._states.get(backend_id)
        if st is None or not st.buckets:
            return 0
        bk = st.buckets.get(bucket_key(batch, kv_tokens))
        return 0 if bk is None else int(bk.n)

    def observations(self, backend_id: str) -> int:
        st = self._states.get(backend_id)
        return 0 if st is None else st.observations

    def linear(self, backend_id: str) -> LinearStep:
        st = self._states.get(backend_id) or self._state(backend_id)
        return st.lin

    def limits(self, backend_id: str) -> EngineLimits:
        st = self._states.get(backend_id) or self._state(backend_id)
        return st.eff_limits

    # -- learning --------------------------------------------------------------------

    def observe_outcome(self, outcome: Outcome) -> None:
        """Tracker listener: learn from one finished request (its gaps and its lengths)."""
        if outcome.backend is None:
            return
        if outcome.output_tokens > 0 and outcome.prompt_tokens > 0:
            # ρ is a property of the traffic, not of a backend: one estimate, slow forgetting
            now = self.clock.now()
            f = 0.5 ** ((now - self._rho_stamp) / (10.0 * self.settings.half_life_s))
            self._rho_stamp = now
            self._rho_p = self._rho_p * f + outcome.prompt_tokens
            self._rho_n = self._rho_n * f + outcome.output_tokens
            k = 1000.0  # output tokens of prior weight
            rho = (self._rho_p + k * self._rho0) / (self._rho_n + k)
            if abs(rho - self._rho_applied) > 0.01 * max(self._rho_applied, 1e-9):
                self._apply_rho(rho)
        dl = outcome.dispatch_load
        if dl is not None and outcome.first_token_at is not None and outcome.dispatched_at is not None:
            self.observe_ttft(
                outcome.backend, outcome.prompt_tokens, dl, outcome.first_token_at - outcome.dispatched_at
            )
        samples = outcome.step_samples
        if samples:
            # A streamed event may carry several tokens (vLLM packs them when its output
            # loop falls behind), so an event gap can span several steps. ``usage`` gives
            # the true count at the end: the response's gaps are rescaled to its mean
            # pace per token, what vLLM's own inter-token latency measures.
            steps = outcome.output_tokens - 1
            if steps > len(samples):
                f = len(samples) / steps
                samples = tuple((g * f, r, kv) for g, r, kv in samples)
            self.observe(outcome.backend, samples)

    def observe_ttft(
        self, backend_id: str, prompt_tokens: int, load: tuple[int, int, int], ttft_s: float
    ) -> None:
        """Learn what a backend's first tokens take beyond the step model: ``ttft_s`` (from
        dispatch) minus :func:`~slorouter.models.static.first_token_base` at ``load`` =
        (running, kv_tokens, prefill backlog) when the request was placed, fitted as
        ``a + b·running`` by decayed ridge least squares (both pulled to 0 with the weight
        of ``ttft_prior_weight`` requests; ``b ≥ 0``). What the fit adds is never negative
        (:meth:`EngineLimits.ttft_extra`): a conservative step model is not made less so."""
        st = self._state(backend_id)
        running, kv, backlog = load
        y = ttft_s - first_token_base(prompt_tokens, running, kv, backlog, st.lin, st.limits)
        if not math.isfinite(y):
            return
        now = self.clock.now()
        f = 0.5 ** ((now - st.ttft_stamp) / self.settings.half_life_s)
        st.ttft_stamp = now
        x = float(running)
        t = st.ttft
        t[0] = t[0] * f + 1.0
        t[1] = t[1] * f + x
        t[2] = t[2] * f + x * x
        t[3] = t[3] * f + y
        t[4] = t[4] * f + x * y
        lam = self.settings.ttft_prior_weight
        a11, a12, a22 = t[0] + lam, t[1], t[2] + lam
        det = a11 * a22 - a12 * a12
        a = (t[3] * a22 - a12 * t[4]) / det
        b = (a11 * t[4] - a12 * t[3]) / det
        if b < 0.0:  # what load adds does not shrink with load: fit the level alone
            a, b = t[3] / a11, 0.0
        st.eff_limits = replace(st.limits, ttft_a_s=a, ttft_b_s=b)

    def observe(self, backend_id: str, samples: Sequence[Sample]) -> None:
        """Learn from consecutive ``(gap_s, running, kv_tokens)`` samples of one backend.

        The fit learns from every response at once: its mean pace and load (a long one:
        its ``window_tokens`` windows, at most ``samples_per_outcome`` of them evenly
        spread), each point worth its tokens in windows — so a slow server's few
        short responses count as soon as they end. The digests take windows of
        ``window_tokens`` token-steps: a long response gives its own, shorter ones are
        pooled with the backend's other recent responses until a window is full — a
        digest's window is always the pace over ``window_tokens`` token-steps, whatever
        the lengths; at most ``max_batches_per_s`` window batches a second per backend."""
        m = len(samples)
        if m == 0:
            return
        cfg = self.settings
        now = self.clock.now()
        st = self._state(backend_id)
        W = cfg.window_tokens
        wins: list[tuple[float, float, float]] = []
        if m >= W:
            nwin = m // W
            stride = max(1, -(-nwin // cfg.samples_per_outcome))
            for k in range(0, nwin, stride):
                wins.append(_mean(samples[k * W : (k + 1) * W]))
            fit_pts = [(float(stride), r, kv, gap) for gap, r, kv in wins]
        else:
            g, r, kv = _mean(samples)
            fit_pts = [(m / W, r, kv, g)]
            pool = st.pool
            pool[0] += g * m
            pool[1] += r * m
            pool[2] += kv * m
            pool[3] += m
            if pool[3] >= W:
                n = pool[3]
                wins.append((pool[0] / n, pool[1] / n, pool[2] / n))
                st.pool = [0.0, 0.0, 0.0, 0.0]
        coef, rho = st.coef, st.rho
        cpr = coef.c_prefill_s * rho
        pts = [(w, r, kv, gap - cpr * r) for w, r, kv, gap in fit_pts if 0.0 < gap < 60.0 and r >= 1]
        if pts:
            f = 0.5 ** ((now - st.stamp) / cfg.half_life_s)
            st.stamp = now
            st.sums = [v * f for v in st.sums]
            add_sums(st.sums, pts)
            st.observations += len(pts)
        if wins and (cfg.max_batches_per_s <= 0 or now >= st.next_batch_at):
            if cfg.max_batches_per_s > 0:
                st.next_batch_at = now + 1.0 / cfg.max_batches_per_s
            st.window_batches += 1
            self._add_windows(st, wins, now)
        if not pts:
            return
        st.n_outcomes += 1
        if st.n_outcomes % cfg.refit_every == 1 or cfg.refit_every == 1 or now >= st.refit_at:
            self._refit(st, now)

    def _add_windows(self, st: _State, wins: list[tuple[float, float, float]], now: float) -> None:
        """Windows into the load buckets' digests and the quantile-ratio digest."""
        cfg = self.settings
        groups: dict[int, tuple[list[float], list[float]]] = {}
        ratios: list[float] = []
        coef = st.coef
        cpr = coef.c_prefill_s * st.rho
        for gap, r, kv in wins:
            if not 0.0 < gap < 60.0 or r < 1:
                continue
            key = bucket_key(round(r), round(kv))
            grp = groups.get(key)
            if grp is None:
                grp = groups[key] = ([], [0.0, 0.0])
            grp[0].append(gap)
            grp[1][0] += r
            grp[1][1] += kv
            pace = coef.c0_s + (coef.c_batch_s + cpr) * r + coef.c_kv_s * kv
            if pace > 0:
                ratios.append(gap / pace)
        for key, (gaps, (sb, skv)) in groups.items():
            bk = st.buckets.get(key)
            if bk is None:
                bk = st.buckets[key] = _Bucket(self._digest(now), now)
            bk.add(gaps, sb, skv, now, cfg.half_life_s)
        if ratios:
            if st.ratio is None:
                st.ratio = self._digest(now)
            st.ratio.add(ratios, now)

    def _digest(self, now: float) -> DecayingDigest:
        c = self.settings
        return DecayingDigest(now, c.half_life_s, c.decay_interval_s, c.max_centroids)

    def _refit(self, st: _State, now: float) -> None:
        cfg = self.settings
        spread = cfg.default_spread if st.source == "default" else cfg.prior_spread
        sol = fit(ridge(st.sums, st.prior, spread, cfg.noise))
        if sol is not None:
            st.coef = LinearStep(sol[0], sol[1], sol[2] * KV_SCALE, st.prior.c_prefill_s)
        if st.ratio is not None:
            m = st.ratio.mass(now)
            r = st.ratio.quantile(cfg.quantile)
            if m > 0 and not math.isnan(r):
                k = cfg.min_support
                st.ratio_q = max(0.5, (m * r + k * st.prior_ratio) / (m + k))
        st.lin = _pace(st.coef, st.rho, st.ratio_q)
        st.refit_at = now + cfg.refit_interval_s

    def refit(self, backend_id: str) -> None:
        """Refit one backend now (normally done every ``refit_every`` batches)."""
        self._refit(self._state(backend_id), self.clock.now())

    def describe(self, backend_id: str) -> dict[str, Any]:
        """What the model believes about one backend, and on how much data."""
        st = self._state(backend_id)
        c, lin = st.coef, st.lin
        return {
            "source": st.source,
            "observations": st.observations,
            "batches": st.n_outcomes,
            "window_batches": st.window_batches,
            "buckets": len(st.buckets),
            "quantile": self.settings.quantile,
            "ratio_q": st.ratio_q,
            "prefill_per_output_token": st.rho,
            "ttft_extra": {
                "a_s": st.eff_limits.ttft_a_s,
                "b_s_per_running": st.eff_limits.ttft_b_s,
                "requests": st.ttft[0],
            },
            "decode_fit": {"c0_s": c.c0_s, "c_batch_s": c.c_batch_s, "c_kv_s": c.c_kv_s},
            "pace": {
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
    prefill_ratio: float = 0.0,
) -> OnlineLatency:
    """The wiring's entry point: a model seeded from ``profile`` (all backends) and
    ``per_backend`` profiles; without any, engine defaults marked ``source="default"``.
    ``prefill_ratio``: prior prompt tokens per output token of the traffic (0: unknown
    until requests finish)."""
    base = settings or LatencySettings()
    if base.quantile != quantile:
        base = LatencySettings(**{**_fields(base), "quantile": quantile})
    if profile is None:
        model = OnlineLatency(clock, settings=base, prefill_ratio=prefill_ratio)
    else:
        model = OnlineLatency(
            clock,
            profile.step,
            profile_limits(profile),
            settings=base,
            default_ratio=profile_ratio(profile),
            default_source=profile.source,
            prefill_ratio=prefill_ratio,
        )
    for bid, prof in (per_backend or {}).items():
        model.set_prior(bid, prof.step, profile_limits(prof), profile_ratio(prof), prof.source)
    return model


def _fields(s: LatencySettings) -> dict[str, Any]:
    return {k: getattr(s, k) for k in LatencySettings.__dataclass_fields__}
