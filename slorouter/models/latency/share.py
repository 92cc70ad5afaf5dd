"""What the latency model learns from one finished request, as a value another process can learn from.

A logical router spread over several processes (workers, replicas) should route by the
model one router would have — learned from **every** outcome, not from each process's
own share (with 8 replicas, an eighth: measured to cost 2–3 points of attainment on a
tight tier, docs/scale-out.md). So each process turns every outcome it learns from into
an :class:`Observation` — exactly what :meth:`OnlineLatency.learn_observation` then
ingests, never the per-token samples — and publishes it; the others ingest it the same
way (:mod:`slorouter.state.learning` carries them in the shared rows).

An observation holds, for one response on one backend:

* its prompt and output tokens (ρ, the fleet's prompt tokens per output token);
* its first token: the load at dispatch (running, KV, prefill backlog: the global
  labels of the shared view) and the time from dispatch to first token;
* its **fit points** ``(weight, running, kv, gap)`` — raw: the receiving model removes
  the prefill interference with its own current coefficients, as one router would at
  that moment — and the **windows** ``(gap, running, kv)`` its sender's window pool
  completed with it (:mod:`~.windows`). At most ``samples_per_outcome`` of each (+1
  pooled window): its size is bounded whatever the response's length.
"""

from __future__ import annotations

from dataclasses import dataclass

from slorouter.models.latency.fit import FitPoint
from slorouter.models.latency.windows import Window

TtftPoint = tuple[int, int, int, float]  # (running, kv_tokens, prefill backlog) at dispatch, ttft_s


@dataclass(frozen=True, slots=True)
class Observation:
    backend: str
    prompt_tokens: int
    output_tokens: int
    ttft: TtftPoint | None = None
    fit: tuple[FitPoint, ...] = ()
    windows: tuple[Window, ...] = ()
