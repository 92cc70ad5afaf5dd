"""The online latency model: the read API policies use, over one state per backend.

:class:`OnlineLatency` implements :class:`~slorouter.models.base.LatencyView`. It keeps
a :class:`~.backend.BackendLatency` per backend it has *learned* about (a read never
creates one: a backend not observed yet is answered from its prior's view, built when
the prior is set), the fleet-wide :class:`~.traffic.PrefillRatio`, and routes what the
tracker reports (finished requests) to them. ``build_latency`` is the wiring's entry
point. ``to_state`` / ``from_state`` + ``adopt`` are the saved state (see
:mod:`slorouter.models.persist`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from slorouter.clock import Clock
from slorouter.models.latency.backend import BackendLatency, BackendPrior
from slorouter.models.latency.buckets import bucket_key
from slorouter.models.latency.fit import FitPoint
from slorouter.models.latency.settings import LatencySettings
from slorouter.models.latency.share import Observation, TtftPoint
from slorouter.models.latency.traffic import PrefillRatio
from slorouter.models.latency.windows import Sample, Window
from slorouter.models.profile import StepProfile
from slorouter.models.saved import StateError, field, section
from slorouter.models.static import EngineLimits, LinearStep
from slorouter.values import Outcome

STATE_VERSION = 1
RHO_HALF_LIFE = 10.0  # ρ forgets this many times slower than the step model


@dataclass(frozen=True, slots=True)
class LearnedLatency:
    """Saved learning, checked and built on a model's priors; not applied yet."""

    traffic: PrefillRatio
    backends: dict[str, BackendLatency]


class OnlineLatency:
    """Per-backend online pace model (implements ``LatencyView``); see the package docs."""

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
        self._default = BackendPrior(
            default_prior or LinearStep(), default_limits or EngineLimits(), default_ratio, default_source
        )
        self._traffic = PrefillRatio(prefill_ratio, RHO_HALF_LIFE * self.settings.half_life_s, clock.now())
        self._states: dict[str, BackendLatency] = {}  # what was learned, per backend
        self._priors: dict[str, BackendPrior] = {}  # per-backend priors (else the default)
        self._views: dict[str, BackendLatency] = {}  # the priors' answers (never learn)
        self._default_view = self._blank(self._default)
        # told every observation this model learned from its own outcomes (the router
        # processes of one logical router share them: slorouter.state.learning)
        self.on_observation: Callable[[Observation], None] | None = None

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
        p = self._priors[backend_id] = BackendPrior(prior, limits, ratio, source)
        self._views[backend_id] = self._blank(p)
        self._states.pop(backend_id, None)

    def set_prefill_ratio(self, rho: float) -> None:
        """Prompt tokens per output token of the traffic (e.g. from a workload sample);
        learning from finished requests takes over with data."""
        self._traffic.set_prior(rho)
        self._apply_rho()

    def _apply_rho(self) -> None:
        rho = self._traffic.applied
        for st in self._states.values():
            st.set_rho(rho)
        for v in self._views.values():
            v.set_rho(rho)
        self._default_view.set_rho(rho)

    def _blank(self, prior: BackendPrior) -> BackendLatency:
        return BackendLatency(prior, self._traffic.applied, self.clock.now(), self.settings)

    def _view(self, backend_id: str) -> BackendLatency:
        """What is known of a backend, for reading (its prior's view if nothing was learned)."""
        return self._states.get(backend_id) or self._views.get(backend_id) or self._default_view

    def _learner(self, backend_id: str) -> BackendLatency:
        st = self._states.get(backend_id)
        if st is None:
            st = self._states[backend_id] = self._blank(self._priors.get(backend_id) or self._default)
        return st

    # -- LatencyView -----------------------------------------------------------------

    def step_time(self, backend_id: str, batch: int, kv_tokens: int, prefill_tokens: int = 0) -> float:
        st = self._states.get(backend_id) or self._view(backend_id)  # (the hot path: inlined once)
        lin = st.lin
        pred = lin.at(batch, kv_tokens, 0)
        buckets = st.buckets.by_key
        if buckets:
            bk = buckets.get(bucket_key(batch, kv_tokens))
            if bk is not None and bk.n > 0:
                w = min(1.0, bk.n / self.settings.min_support)
                q = bk.digest.quantile(self.settings.quantile)
                shift = lin.at(batch, kv_tokens) - lin.at(round(bk.sum_b / bk.n), round(bk.sum_kv / bk.n))
                pred = w * max(0.0, q + shift / st.ratio.value) + (1.0 - w) * pred
        return pred + lin.c_prefill_s * prefill_tokens

    def prefill_time(self, backend_id: str, prompt_tokens: int) -> float:
        st = self._view(backend_id)
        c = st.fit.coef.scaled(st.ratio.value)
        n = st.prior.limits.prefill_chunks(prompt_tokens)
        return (
            n * (c.c0_s + c.c_batch_s)
            + c.c_kv_s * prompt_tokens * (n + 1) / 2
            + c.c_prefill_s * prompt_tokens
        )

    def support(self, backend_id: str, batch: int, kv_tokens: int) -> int:
        st = self._states.get(backend_id)
        if st is None or not st.buckets.by_key:
            return 0
        bk = st.buckets.by_key.get(bucket_key(batch, kv_tokens))
        return 0 if bk is None else int(bk.n)

    def observations(self, backend_id: str) -> int:
        st = self._states.get(backend_id)
        return 0 if st is None else st.fit.observations

    def linear(self, backend_id: str) -> LinearStep:
        return (self._states.get(backend_id) or self._view(backend_id)).lin

    def limits(self, backend_id: str) -> EngineLimits:
        return (self._states.get(backend_id) or self._view(backend_id)).eff_limits

    def describe(self, backend_id: str) -> dict[str, Any]:
        """What the model believes about one backend, and on how much data."""
        return self._view(backend_id).describe()

    # -- learning --------------------------------------------------------------------

    def observe_outcome(self, outcome: Outcome) -> None:
        """Tracker listener: learn from one finished request (its gaps and its lengths)."""
        obs = self.observation(outcome)
        if obs is None:
            return
        self.learn_observation(obs)
        if self.on_observation is not None:
            self.on_observation(obs)

    def observation(self, outcome: Outcome) -> Observation | None:
        """What this model learns from a finished request (None: nothing), its step
        samples reduced to fit points and windows (:mod:`~.share`). The backend's window
        pool takes the response's tokens here: call once per outcome."""
        b = outcome.backend
        if b is None:
            return None
        ttft: TtftPoint | None = None
        dl = outcome.dispatch_load
        if dl is not None and outcome.first_token_at is not None and outcome.dispatched_at is not None:
            ttft = (dl[0], dl[1], dl[2], outcome.first_token_at - outcome.dispatched_at)
        wins: list[Window] = []
        fit_pts: list[FitPoint] = []
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
            wins, fit_pts = self._learner(b).split(samples)
        return Observation(b, outcome.prompt_tokens, outcome.output_tokens, ttft, tuple(fit_pts), tuple(wins))

    def learn_observation(self, obs: Observation) -> None:
        """Learn from one finished request's observation — this process's own
        (:meth:`observe_outcome`) or another router process's (:mod:`~.share`)."""
        if (
            obs.output_tokens > 0
            and obs.prompt_tokens > 0
            and self._traffic.observe(obs.prompt_tokens, obs.output_tokens, self.clock.now())
        ):
            self._apply_rho()
        if obs.ttft is not None:
            running, kv, backlog, ttft_s = obs.ttft
            self.observe_ttft(obs.backend, obs.prompt_tokens, (running, kv, backlog), ttft_s)
        if obs.fit:
            self._learner(obs.backend).ingest(obs.windows, obs.fit, self.clock.now())

    def observe_ttft(
        self, backend_id: str, prompt_tokens: int, load: tuple[int, int, int], ttft_s: float
    ) -> None:
        """Learn what a backend's first tokens take beyond the step model: ``ttft_s`` (from
        dispatch) minus :func:`~slorouter.models.static.first_token_base` at ``load`` =
        (running, kv_tokens, prefill backlog) when the request was placed (see
        :mod:`slorouter.models.latency.ttft`)."""
        self._learner(backend_id).learn_ttft(prompt_tokens, load, ttft_s, self.clock.now())

    def observe(self, backend_id: str, samples: Sequence[Sample]) -> None:
        """Learn from consecutive ``(gap_s, running, kv_tokens)`` samples of one response
        (see :mod:`slorouter.models.latency.windows`); the digests take at most
        ``max_batches_per_s`` window batches a second per backend."""
        if samples:
            self._learner(backend_id).learn(samples, self.clock.now())

    def refit(self, backend_id: str) -> None:
        """Refit one backend now (normally done every ``refit_every`` batches); nothing
        for a backend nothing was learned about."""
        st = self._states.get(backend_id)
        if st is not None:
            st.refit(self.clock.now())

    # -- saved state -----------------------------------------------------------------

    def to_state(self, now: float) -> dict[str, Any]:
        """What was learned (priors and settings come from the config)."""
        return {
            "v": STATE_VERSION,
            "prefill_ratio": self._traffic.to_state(now),
            "backends": {bid: st.to_state(now) for bid, st in self._states.items()},
        }

    def from_state(self, raw: Any, now: float, where: str = "latency") -> LearnedLatency:
        """Saved learning, checked and built on this model's priors (nothing applied:
        see :meth:`adopt`); raises :class:`~slorouter.models.saved.StateError`."""
        sec = section(raw, where, STATE_VERSION)
        traffic = PrefillRatio.from_state(
            field(sec, "prefill_ratio", where),
            now,
            f"{where}.prefill_ratio",
            self._traffic.prior,
            self._traffic.half_life_s,
        )
        saved = field(sec, "backends", where)
        if not isinstance(saved, Mapping):
            raise StateError(f"{where}.backends: must be an object")
        backends = {
            str(bid): BackendLatency.from_state(
                v,
                now,
                f"{where}.backends.{bid}",
                self._priors.get(str(bid)) or self._default,
                traffic.applied,
                self.settings,
            )
            for bid, v in saved.items()
        }
        return LearnedLatency(traffic, backends)

    def adopt(self, learned: LearnedLatency) -> None:
        """Take saved learning (from :meth:`from_state`); backends not in it keep theirs."""
        self._traffic = learned.traffic
        self._states.update(learned.backends)
        self._apply_rho()


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
    base = replace(settings or LatencySettings(), quantile=quantile)
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
