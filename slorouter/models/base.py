"""Read-only views of the models, as policies see them (through a Snapshot).

Implementations learn online (see :mod:`slorouter.models.latency`,
:mod:`slorouter.models.lengths`); these protocols are all a policy may call.
Every prediction is at a conservative quantile (default p90), never the mean.
"""

from __future__ import annotations

from typing import Protocol

from slorouter.models.static import EngineLimits, LinearStep


class LatencyView(Protocol):
    def step_time(self, backend_id: str, batch: int, kv_tokens: int, prefill_tokens: int = 0) -> float:
        """Predicted duration (s) of one engine step carrying ``batch`` running requests
        holding ``kv_tokens`` KV tokens, plus ``prefill_tokens`` of prompt prefill.

        The online model (:mod:`slorouter.models.latency`) predicts the *pace* a resident
        sees: with ``prefill_tokens=0`` the typical prefill interference at that load is
        included (new requests' prompts ride along as finished ones are replaced)."""
        ...

    def prefill_time(self, backend_id: str, prompt_tokens: int) -> float:
        """Predicted time (s) from dispatch to first token on an idle server."""
        ...

    def support(self, backend_id: str, batch: int, kv_tokens: int) -> int:
        """How many observations the prediction at this load rests on (0 = prior only)."""
        ...

    def linear(self, backend_id: str) -> LinearStep:
        """Conservative linear coefficients (at the model's quantile) of this backend's
        step time, for fast screening of many servers; ``step_time`` is the reference."""
        ...

    def limits(self, backend_id: str) -> EngineLimits:
        """Engine limits of this backend (max sequences, KV capacity, prefill chunk)."""
        ...


class LengthView(Protocol):
    def bound(self, tier: str, generated: int = 0, max_tokens: int | None = None) -> int:
        """Upper bound (quantile) on a request's total output tokens, given that it has
        already produced ``generated`` tokens; never above ``max_tokens`` when given."""
        ...
