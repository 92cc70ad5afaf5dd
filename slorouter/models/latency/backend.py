"""What the latency model knows of one backend: its prior and the learning parts.

The prior (:class:`BackendPrior`: coefficients, engine limits, quantile ratio, source)
comes from the config; the parts learn — :class:`~.windows.WindowPool` (step samples
to windows), :class:`~.fit.PaceFit` (the decode coefficients),
:class:`~.buckets.LoadBuckets` and :class:`~.buckets.QuantileRatio` (the windows'
digests), :class:`~.ttft.TtftExcess` (first tokens beyond the step model). ``lin`` (the
conservative pace coefficients) and ``eff_limits`` (the limits with the learned TTFT
excess) are derived from them; ``rho`` is the fleet-wide prompt tokens per output token
the model applies. ``to_state`` / ``from_state`` compose the parts' own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slorouter.models.latency.buckets import LoadBuckets, QuantileRatio
from slorouter.models.latency.fit import FitPoint, PaceFit
from slorouter.models.latency.settings import LatencySettings
from slorouter.models.latency.ttft import TtftExcess
from slorouter.models.latency.windows import Sample, Window, WindowPool
from slorouter.models.saved import count, field, section
from slorouter.models.static import EngineLimits, LinearStep, first_token_base

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class BackendPrior:
    step: LinearStep
    limits: EngineLimits
    ratio: float = 1.0  # p90/mean of a profile's measured points; 1 without
    source: str = "default"  # "default" = engine defaults (a guess), else a profile's


def pace(coef: LinearStep, rho: float, ratio: float) -> LinearStep:
    """Conservative pace coefficients: the interference folded into ``c_batch_s``."""
    return LinearStep(
        coef.c0_s * ratio,
        (coef.c_batch_s + coef.c_prefill_s * rho) * ratio,
        coef.c_kv_s * ratio,
        coef.c_prefill_s * ratio,
    )


class BackendLatency:
    __slots__ = (
        "_eff",
        "buckets",
        "fit",
        "lin",
        "n_outcomes",
        "next_batch_at",
        "pool",
        "prior",
        "ratio",
        "refit_at",
        "rho",
        "settings",
        "ttft",
        "window_batches",
    )

    def __init__(self, prior: BackendPrior, rho: float, now: float, settings: LatencySettings) -> None:
        self.prior = prior
        self.settings = settings
        self.rho = rho
        self.fit = PaceFit(prior.step, now)
        self.ratio = QuantileRatio(prior.ratio)
        self.buckets = LoadBuckets()
        self.pool = WindowPool()
        self.ttft = TtftExcess(now)
        self.n_outcomes = 0  # responses the fit learned from
        self.window_batches = 0  # window batches into the digests
        self.next_batch_at = -math.inf  # transient: the digests' rate limit ...
        self.refit_at = -math.inf  # ... and the next timed refit
        self.lin = pace(prior.step, rho, prior.ratio)
        self._eff: EngineLimits | None = prior.limits  # None: the TTFT fit moved since

    @property
    def eff_limits(self) -> EngineLimits:
        """The prior's limits with the learned TTFT excess (rebuilt when read after a
        first token moved the fit: first tokens come once per request, reads may not)."""
        eff = self._eff
        if eff is None:
            eff = self._eff = self.ttft.limits(self.prior.limits)
        return eff

    def set_rho(self, rho: float) -> None:
        self.rho = rho
        self.lin = pace(self.fit.coef, rho, self.ratio.value)

    # -- learning --------------------------------------------------------------------

    def learn(self, samples: Sequence[Sample], now: float) -> None:
        """Consecutive ``(gap_s, running, kv_tokens)`` samples of one response (non-empty)."""
        wins, fit_pts = self.split(samples)
        self.ingest(wins, fit_pts, now)

    def split(self, samples: Sequence[Sample]) -> tuple[list[Window], list[FitPoint]]:
        """One response's samples (non-empty) as the windows complete now and its fit points
        (:mod:`~.windows`): what :meth:`ingest` learns from — and what another router
        process of the same logical router learns from too (:mod:`~.share`)."""
        cfg = self.settings
        return self.pool.split(samples, cfg.window_tokens, cfg.samples_per_outcome)

    def ingest(self, wins: Sequence[Window], fit_pts: Sequence[FitPoint], now: float) -> None:
        """Learn from one response's windows and fit points (see :meth:`split`); the fit
        points are raw (decode gap with the prefill interference still in: removed here
        with this model's current ``c_prefill · ρ``)."""
        cfg = self.settings
        coef = self.fit.coef
        cpr = coef.c_prefill_s * self.rho
        # one engine step at batch r is seen by r streams at once: r samples, one
        # observation — weighted per step (÷ r), not per token, so a level with few
        # streams counts as much as its steps do (per token, the fit followed the busiest
        # level and missed a CPU vLLM's one-stream ITL by up to +26 %)
        pts = [(w / r, r, kv, gap - cpr * r) for w, r, kv, gap in fit_pts if 0.0 < gap < 60.0 and r >= 1]
        if pts:
            self.fit.add(pts, now, cfg.half_life_s)
        if wins and (cfg.max_batches_per_s <= 0 or now >= self.next_batch_at):
            if cfg.max_batches_per_s > 0:
                self.next_batch_at = now + 1.0 / cfg.max_batches_per_s
            self.window_batches += 1
            self.buckets.add(wins, now, cfg)
            self.ratio.add(wins, coef, self.rho, now, cfg)
        if not pts:
            return
        self.n_outcomes += 1
        if self.n_outcomes % cfg.refit_every == 1 or cfg.refit_every == 1 or now >= self.refit_at:
            self.refit(now)

    def learn_ttft(self, prompt_tokens: int, load: tuple[int, int, int], ttft_s: float, now: float) -> None:
        """One first token: ``ttft_s`` from dispatch at ``load`` = (running, kv, backlog)."""
        running, kv, backlog = load
        y = ttft_s - first_token_base(prompt_tokens, running, kv, backlog, self.lin, self.prior.limits)
        if not math.isfinite(y):
            return
        cfg = self.settings
        self.ttft.observe(running, y, now, cfg.half_life_s, cfg.ttft_prior_weight)
        self._eff = None

    def refit(self, now: float) -> None:
        cfg = self.settings
        spread = cfg.default_spread if self.prior.source == "default" else cfg.prior_spread
        self.fit.refit(self.prior.step, spread, cfg.noise, guess=self.prior.source == "default")
        self.ratio.refit(now, cfg)
        self.lin = pace(self.fit.coef, self.rho, self.ratio.value)
        self.refit_at = now + cfg.refit_interval_s

    def describe(self) -> dict[str, Any]:
        c, lin = self.fit.coef, self.lin
        return {
            "source": self.prior.source,
            "observations": self.fit.observations,
            "batches": self.n_outcomes,
            "window_batches": self.window_batches,
            "buckets": len(self.buckets.by_key),
            "quantile": self.settings.quantile,
            "ratio_q": self.ratio.value,
            "prefill_per_output_token": self.rho,
            "ttft_extra": self.ttft.describe(),
            "decode_fit": {"c0_s": c.c0_s, "c_batch_s": c.c_batch_s, "c_kv_s": c.c_kv_s},
            "pace": {
                "c0_s": lin.c0_s,
                "c_batch_s": lin.c_batch_s,
                "c_kv_s": lin.c_kv_s,
                "c_prefill_s": lin.c_prefill_s,
            },
        }

    # -- saved state -----------------------------------------------------------------

    def to_state(self, now: float) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "fit": self.fit.to_state(now),
            "ratio": self.ratio.to_state(now),
            "buckets": self.buckets.to_state(now),
            "windows": self.pool.to_state(),
            "ttft": self.ttft.to_state(now),
            "outcomes": self.n_outcomes,
            "window_batches": self.window_batches,
        }

    @classmethod
    def from_state(
        cls, raw: Any, now: float, where: str, prior: BackendPrior, rho: float, settings: LatencySettings
    ) -> BackendLatency:
        """A backend with this prior (from the loading router's config) and the saved learning."""
        sec = section(raw, where, STATE_VERSION)
        out = cls(prior, rho, now, settings)
        out.fit = PaceFit.from_state(field(sec, "fit", where), now, f"{where}.fit", prior.step)
        out.ratio = QuantileRatio.from_state(
            field(sec, "ratio", where), now, f"{where}.ratio", prior.ratio, settings
        )
        out.buckets = LoadBuckets.from_state(field(sec, "buckets", where), now, f"{where}.buckets", settings)
        out.pool = WindowPool.from_state(field(sec, "windows", where), f"{where}.windows")
        out.ttft = TtftExcess.from_state(
            field(sec, "ttft", where), now, f"{where}.ttft", settings.ttft_prior_weight
        )
        out.n_outcomes = count(field(sec, "outcomes", where), f"{where}.outcomes")
        out.window_batches = count(field(sec, "window_batches", where), f"{where}.window_batches")
        out.lin = pace(out.fit.coef, rho, out.ratio.value)
        out._eff = None
        return out
