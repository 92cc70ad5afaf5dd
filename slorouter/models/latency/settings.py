"""The latency model's settings (one object, shared by its parts)."""

from __future__ import annotations

from dataclasses import dataclass

from slorouter.models.digest import DecayingDigest


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

    def digest(self, now: float) -> DecayingDigest:
        """An empty digest with the model's forgetting."""
        return DecayingDigest(now, self.half_life_s, self.decay_interval_s, self.max_centroids)

    def saved_digest(self, raw: object, now: float, where: str) -> DecayingDigest:
        """A digest with the model's forgetting and saved contents (see :mod:`slorouter.models.saved`)."""
        return DecayingDigest.from_state(
            raw, now, where, self.half_life_s, self.decay_interval_s, self.max_centroids
        )
