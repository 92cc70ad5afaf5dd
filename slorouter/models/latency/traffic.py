"""ρ, the prompt tokens per output token of the traffic: one estimate for the whole fleet.

Each decode slot brings ``ρ`` prefill tokens per step on average (finished requests are
replaced by new ones whose prompts ride along in chunks), so the pace of every server
depends on it; it is a property of the traffic, not of a server. Estimated as
``Σ prompt / Σ output`` of finished requests with exponential forgetting (half-life
``half_life_s``, 10× the step model's) and ``PRIOR_OUTPUT_TOKENS`` output tokens of
prior weight at ``prior``. The value the model applies (``applied``) moves only when
the estimate moved by more than 1 %: each move reprices every backend.
"""

from __future__ import annotations

from typing import Any

from slorouter.models.saved import age, field, num, section

PRIOR_OUTPUT_TOKENS = 1000.0
STATE_VERSION = 1


class PrefillRatio:
    __slots__ = ("applied", "half_life_s", "output_tokens", "prior", "prompt_tokens", "stamp")

    def __init__(self, prior: float, half_life_s: float, now: float) -> None:
        self.prior = prior
        self.half_life_s = half_life_s
        self.applied = prior
        self.prompt_tokens = 0.0  # decayed Σ prompt tokens of finished requests
        self.output_tokens = 0.0  # decayed Σ output tokens
        self.stamp = now

    def set_prior(self, rho: float) -> None:
        """A new prior (e.g. from a workload sample), applied at once."""
        self.prior = rho
        self.applied = rho

    def observe(self, prompt_tokens: int, output_tokens: int, now: float) -> bool:
        """Learn from one finished request; True when ``applied`` moved."""
        f = 0.5 ** ((now - self.stamp) / self.half_life_s)
        self.stamp = now
        self.prompt_tokens = self.prompt_tokens * f + prompt_tokens
        self.output_tokens = self.output_tokens * f + output_tokens
        k = PRIOR_OUTPUT_TOKENS
        rho = (self.prompt_tokens + k * self.prior) / (self.output_tokens + k)
        if abs(rho - self.applied) > 0.01 * max(self.applied, 1e-9):
            self.applied = rho
            return True
        return False

    def to_state(self, now: float) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "age_s": now - self.stamp,
            "applied": self.applied,
        }

    @classmethod
    def from_state(cls, raw: Any, now: float, where: str, prior: float, half_life_s: float) -> PrefillRatio:
        sec = section(raw, where, STATE_VERSION)
        out = cls(prior, half_life_s, age(sec, where, now))
        out.prompt_tokens = num(field(sec, "prompt_tokens", where), f"{where}.prompt_tokens", 0.0)
        out.output_tokens = num(field(sec, "output_tokens", where), f"{where}.output_tokens", 0.0)
        out.applied = num(field(sec, "applied", where), f"{where}.applied", 0.0)
        return out
