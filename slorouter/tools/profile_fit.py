"""From streamed responses to a step-time model: the analysis behind ``slorouter profile``.

Pure functions, no I/O. Input: one :class:`Trace` per request of a concurrency level —
when it was sent, its prompt length, and its *token events*: ``(time, cumulative completion
tokens)`` for every received chunk that carried tokens. Token counts come from the engine's
``usage`` (vLLM's ``continuous_usage_stats`` gives them per chunk), because under load one SSE
chunk can carry several tokens and some chunks carry none.

Chunks are step observations, not tokens. The gap between two token events of a request
that carries ``k`` tokens spans ``k`` engine steps, during which the engine held (time
averaged) ``batch`` sequences and ``kv`` KV tokens, and prefilled the prompts of the requests
whose first token arrived in that gap. One :class:`StepObs` per gap, normalised per step::

    gap / k  =  c0 + c_batch·batch + c_kv·kv + c_prefill·(prefill_tokens / k)

is the simulated engine's step model (``slorouter.engine.model``: batch = sequences in the
step including prefill chunks, kv = KV held, prefill = prompt tokens in the step).

:func:`fit_step` solves it by non-negative weighted least squares (every concurrency level
weighs the same in total; exact, by enumerating the subsets of the optional terms; ``c0`` is
always in) and keeps the simplest subset whose residual is within ``tolerance`` (default 1 %)
of the best: a term the data cannot separate (``c_kv`` when kv only grows with batch) is
dropped rather than given a noisy value. Among equally simple subsets the lower residual wins,
so with collinear batch and kv either may carry the slope; predictions inside the measured
range are the same, and the router's online model refines it with live traffic.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from slorouter.models.latency.fit import solve
from slorouter.models.static import LinearStep

TERMS = ("c_batch_s", "c_kv_s", "c_prefill_s")


@dataclass(frozen=True, slots=True)
class Trace:
    """One request as the client saw it (times in seconds, any monotonic origin)."""

    start: float
    prompt_tokens: int
    events: tuple[tuple[float, float], ...]  # (time, cumulative completion tokens), increasing
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.events) > 0

    @property
    def first_token(self) -> float:
        return self.events[0][0]

    @property
    def end(self) -> float:
        return self.events[-1][0]

    @property
    def completion_tokens(self) -> float:
        return self.events[-1][1]


@dataclass(frozen=True, slots=True)
class StepObs:
    """A gap between two token events of one request, as a per-step observation."""

    step_s: float  # gap / steps
    steps: float  # tokens carried by the later chunk (= engine steps in the gap)
    batch: float
    kv_tokens: float
    prefill_tokens: float  # prompt tokens prefilled in the gap (all its steps together)


@dataclass(frozen=True, slots=True)
class LevelStats:
    concurrency: int
    requests: int
    errors: int
    mean_ttft_s: float
    mean_itl_s: float  # total decode time / decode tokens (vllm bench's mean ITL)
    p50_itl_s: float
    p90_itl_s: float
    tokens_per_s: float
    mean_batch: float
    mean_kv_tokens: float
    observations: tuple[StepObs, ...] = field(repr=False, default=())


@dataclass(frozen=True, slots=True)
class Fit:
    step: LinearStep
    terms: tuple[str, ...]  # optional terms kept
    rmse_s: float  # per-step residual
    n: int

    def predict(self, o: StepObs) -> float:
        c = self.step
        return (
            c.c0_s
            + c.c_batch_s * o.batch
            + c.c_kv_s * o.kv_tokens
            + c.c_prefill_s * o.prefill_tokens / o.steps
        )


def fallback_events(chunk_times: Sequence[float], completion_tokens: int) -> tuple[tuple[float, float], ...]:
    """Token events when the engine gave only a final token count: ``n`` tokens spread evenly
    over the ``m`` token-bearing chunks (the first chunk carries the first token)."""
    m = len(chunk_times)
    if m == 0 or completion_tokens <= 0:
        return ()
    if m == 1:
        return ((chunk_times[0], float(completion_tokens)),)
    per = (completion_tokens - 1) / (m - 1)
    return tuple((t, 1.0 + i * per) for i, t in enumerate(chunk_times))


def _weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    if total <= 0:
        return math.nan
    acc = 0.0
    for v, w in pairs:
        acc += w
        if acc >= q * total:
            return v
    return pairs[-1][0]


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _generated_at(tr: Trace, t: float) -> float:
    g = 0.0
    for te, c in tr.events:
        if te > t:
            break
        g = c
    return g


def observations(traces: Sequence[Trace]) -> list[StepObs]:
    """Per-gap step observations of one concurrency level (see the module doc)."""
    ok = [t for t in traces if t.ok]
    raw: list[tuple[float, float, float]] = []  # (t0, t1, k)
    for tr in ok:
        for (t0, c0), (t1, c1) in itertools.pairwise(tr.events):
            if c1 > c0 and t1 > t0:
                raw.append((t0, t1, c1 - c0))
    if not raw:
        return []
    per_step = sorted((t1 - t0) / k for t0, t1, k in raw)
    tau = 0.25 * per_step[len(per_step) // 2]  # chunks of one step reach clients a little apart
    out = []
    for t0, t1, k in raw:
        span = t1 - t0
        mid = 0.5 * (t0 + t1)
        # in the engine from its first token on; in the step that prefilled it, as prefill
        decoding = sum(_overlap(tr.first_token, tr.end, t0, t1) for tr in ok) / span
        pre = [tr for tr in ok if t0 + tau < tr.first_token <= t1 + tau]
        prefill = float(sum(tr.prompt_tokens for tr in pre))
        kv = sum(tr.prompt_tokens + _generated_at(tr, mid) for tr in ok if tr.first_token <= mid <= tr.end)
        out.append(StepObs(span / k, k, decoding + len(pre) / k, kv + prefill / k, prefill))
    return out


def level_stats(concurrency: int, traces: Sequence[Trace], wall_s: float) -> LevelStats:
    ok = [t for t in traces if t.ok]
    obs = observations(ok)
    steps = sum(o.steps for o in obs)
    nan = math.nan
    return LevelStats(
        concurrency=concurrency,
        requests=len(ok),
        errors=len(traces) - len(ok),
        mean_ttft_s=sum(t.first_token - t.start for t in ok) / len(ok) if ok else nan,
        mean_itl_s=sum(o.step_s * o.steps for o in obs) / steps if steps else nan,
        p50_itl_s=_weighted_quantile([o.step_s for o in obs], [o.steps for o in obs], 0.5) if obs else nan,
        p90_itl_s=_weighted_quantile([o.step_s for o in obs], [o.steps for o in obs], 0.9) if obs else nan,
        tokens_per_s=sum(t.completion_tokens for t in ok) / wall_s if wall_s > 0 else nan,
        mean_batch=sum(o.batch * o.steps for o in obs) / steps if steps else nan,
        mean_kv_tokens=sum(o.kv_tokens * o.steps for o in obs) / steps if steps else nan,
        observations=tuple(obs),
    )


def _lstsq(cols: list[list[float]], y: list[float], w: list[float]) -> tuple[list[float], float] | None:
    """Weighted least squares on scaled columns (normal equations); (coefficients, weighted SSE)."""
    scale = [max(abs(v) for v in c) or 1.0 for c in cols]
    xs = [[v / s for v in c] for c, s in zip(cols, scale, strict=True)]
    k = len(xs)
    ata = [
        [sum(wi * p * q for wi, p, q in zip(w, xs[i], xs[j], strict=True)) for j in range(k)]
        for i in range(k)
    ]
    aty = [sum(wi * p * q for wi, p, q in zip(w, xs[i], y, strict=True)) for i in range(k)]
    sol = solve(ata, aty)
    if sol is None:
        return None
    coef = [s / sc for s, sc in zip(sol, scale, strict=True)]
    sse = sum(
        wi * (yi - sum(c * col[i] for c, col in zip(coef, cols, strict=True))) ** 2
        for i, (yi, wi) in enumerate(zip(y, w, strict=True))
    )
    return coef, sse


def fit_step(groups: Sequence[Sequence[StepObs]], tolerance: float = 0.01) -> Fit:
    """Non-negative weighted least squares fit of the per-step model (see the module doc).

    ``groups`` are the observations of each concurrency level; every level weighs the same
    in total (a level with 16 streams yields 16 times the gaps of a single stream), and
    within a level an observation weighs its number of steps."""
    obs = [o for g in groups for o in g]
    if not obs:
        raise ValueError("no step observations to fit (did any request stream at least two tokens?)")
    w = [o.steps / sum(x.steps for x in g) for g in groups for o in g]
    y = [o.step_s for o in obs]
    regressors = {
        "c_batch_s": [o.batch for o in obs],
        "c_kv_s": [o.kv_tokens for o in obs],
        "c_prefill_s": [o.prefill_tokens / o.steps for o in obs],
    }
    ones = [1.0] * len(obs)
    candidates: list[tuple[int, float, dict[str, float]]] = []
    for r in range(len(TERMS) + 1):
        for subset in itertools.combinations(TERMS, r):
            if any(max(regressors[t]) <= 0 for t in subset):
                continue
            res = _lstsq([ones, *(regressors[t] for t in subset)], y, w)
            if res is None:
                continue
            coef, sse = res
            if min(coef) < 0 or coef[0] <= 0:
                continue
            candidates.append((r, sse, {"c0_s": coef[0], **dict(zip(subset, coef[1:], strict=True))}))
    if not candidates:
        raise ValueError("the step observations admit no fit with positive coefficients")
    best = min(sse for _, sse, _ in candidates)
    r, sse, coefs = min(
        (c for c in candidates if c[1] <= best * (1 + tolerance) + 1e-18), key=lambda c: (c[0], c[1])
    )
    terms = tuple(t for t in TERMS if t in coefs)
    step = LinearStep(**{"c_kv_s": 0.0, "c_prefill_s": 0.0, "c_batch_s": 0.0, **coefs})
    return Fit(step, terms, math.sqrt(sse / sum(w)), len(obs))
