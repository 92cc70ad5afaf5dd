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
   coefficients (:func:`~slorouter.models.latency.fit.ridge`: a measured profile's
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

Where each part lives (each owns its saved state, ``to_state`` / ``from_state``):
:mod:`~.model` (the read API, :class:`OnlineLatency`, ``build_latency``),
:mod:`~.backend` (one backend: prior, parts, learning steps), :mod:`~.windows`
(1. windows), :mod:`~.buckets` (2. load buckets, 4. quantile ratio), :mod:`~.fit`
(3. least squares), :mod:`~.ttft` (first tokens beyond the step model),
:mod:`~.traffic` (ρ), :mod:`~.settings`.
"""

from slorouter.models.latency.buckets import bucket_key
from slorouter.models.latency.model import (
    LearnedLatency,
    OnlineLatency,
    build_latency,
    profile_limits,
    profile_ratio,
)
from slorouter.models.latency.settings import LatencySettings
from slorouter.models.latency.windows import Sample

__all__ = [
    "LatencySettings",
    "LearnedLatency",
    "OnlineLatency",
    "Sample",
    "bucket_key",
    "build_latency",
    "profile_limits",
    "profile_ratio",
]
