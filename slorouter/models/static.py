"""Fixed-coefficient models: the priors used before anything has been observed.

``step = c0 + c_batch * batch + c_kv * kv_tokens + c_prefill * prefill_tokens``.
The defaults are a generic mid-size GPU engine (≈ 8B model on one H100-class GPU);
they are marked as defaults (``support() == 0``) so policies know they are guesses.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinearStep:
    c0_s: float = 0.012
    c_batch_s: float = 0.00015
    c_kv_s: float = 2.0e-7
    c_prefill_s: float = 6.0e-5

    def at(self, batch: int, kv_tokens: int, prefill_tokens: int = 0) -> float:
        return (
            self.c0_s + self.c_batch_s * batch + self.c_kv_s * kv_tokens + self.c_prefill_s * prefill_tokens
        )

    def scaled(self, factor: float) -> LinearStep:
        """The same model with every coefficient multiplied by ``factor``."""
        return LinearStep(
            self.c0_s * factor, self.c_batch_s * factor, self.c_kv_s * factor, self.c_prefill_s * factor
        )


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """What one engine server can hold (from its profile or config).

    ``max_batched_tokens`` is the per-step token budget of chunked prefill (decode
    tokens + prefill chunk); 0 means prefill is not chunked (a prompt is one step).
    """

    max_num_seqs: int = 256
    kv_capacity_tokens: int = 262_144
    max_batched_tokens: int = 2048
    # time to first token beyond the step model (an API server sharing the engine's CPU,
    # HTTP, tokenization): ttft_a_s + ttft_b_s·running as configured, or — once learned
    # from observed TTFTs — the curve through (running, excess) points ``ttft_xs``/``ttft_ys``
    ttft_a_s: float = 0.0
    ttft_b_s: float = 0.0
    ttft_xs: tuple[float, ...] = ()
    ttft_ys: tuple[float, ...] = ()

    def prefill_chunks(self, prompt_tokens: int) -> int:
        """Steps needed to prefill ``prompt_tokens`` on an otherwise idle engine."""
        c = self.max_batched_tokens
        return 1 if c <= 0 or prompt_tokens <= c else -(-prompt_tokens // c)

    def ttft_extra(self, running: int) -> float:
        """Learned first-token time beyond :func:`first_token_base` with ``running``
        sequences on the server (never negative): with a learned curve, linear between
        its points, its first point's value below them, and beyond the last the last
        segment's (non-negative) slope."""
        xs = self.ttft_xs
        if xs:
            ys = self.ttft_ys
            i = bisect.bisect_right(xs, running)
            if i == 0:
                x = ys[0]
            elif i < len(xs):
                x0, y0 = xs[i - 1], ys[i - 1]
                x = y0 + (ys[i] - y0) * (running - x0) / (xs[i] - x0)
            elif len(xs) > 1:
                slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
                x = ys[-1] + (slope if slope > 0.0 else 0.0) * (running - xs[-1])
            else:
                x = ys[0]
        else:
            x = self.ttft_a_s + self.ttft_b_s * running
        return x if x > 0.0 else 0.0


def first_token_base(
    prompt_tokens: int, running: int, kv_tokens: int, backlog: int, lin: LinearStep, lim: EngineLimits
) -> float:
    """Step-model time from dispatch to the first token of a ``prompt_tokens`` prompt on a
    server running ``running`` sequences holding ``kv_tokens``, behind ``backlog`` prompt
    tokens not yet prefilled: the step in progress, then FCFS prefill chunked by the step
    budget (``chunks · step(running + 1) + c_prefill · tokens``)."""
    tokens = backlog + prompt_tokens
    budget = lim.max_batched_tokens - running
    chunks = 1 if lim.max_batched_tokens <= 0 else -(-tokens // max(1, budget))
    base = lin.c0_s + lin.c_batch_s * (running + 1) + lin.c_kv_s * (kv_tokens + prompt_tokens)
    return (
        (lin.c0_s + lin.c_batch_s * running + lin.c_kv_s * kv_tokens)
        + chunks * base
        + lin.c_prefill_s * tokens
    )


class StaticLatency:
    """The same :class:`LinearStep` for every backend (or one per backend id)."""

    def __init__(
        self,
        default: LinearStep | None = None,
        per_backend: dict[str, LinearStep] | None = None,
        limits: EngineLimits | None = None,
    ):
        self._default = default or LinearStep()
        self._per = dict(per_backend or {})
        self._limits = limits or EngineLimits()

    def _coef(self, backend_id: str) -> LinearStep:
        return self._per.get(backend_id, self._default)

    def linear(self, backend_id: str) -> LinearStep:
        return self._coef(backend_id)

    def limits(self, backend_id: str) -> EngineLimits:
        return self._limits

    def step_time(self, backend_id: str, batch: int, kv_tokens: int, prefill_tokens: int = 0) -> float:
        return self._coef(backend_id).at(batch, kv_tokens, prefill_tokens)

    def prefill_time(self, backend_id: str, prompt_tokens: int) -> float:
        return self._coef(backend_id).at(1, prompt_tokens, prompt_tokens)

    def support(self, backend_id: str, batch: int, kv_tokens: int) -> int:
        return 0


class StaticLengths:
    """Bound = ``max_tokens`` when given, else ``default``; grows past what was generated."""

    def __init__(self, default: int = 512) -> None:
        self._default = default

    def bound(self, tier: str, generated: int = 0, max_tokens: int | None = None) -> int:
        b = max(self._default, generated + 1)
        return min(b, max_tokens) if max_tokens is not None else b
