"""What an engine step reports: its result, the requests that finished, their token
segments — and each token's arrival time from them.

Token arrival times (for per-token deadlines): with ``keep_history=True`` the engine
records every step's end time in :attr:`~slorouter.engine.model.EngineModel.step_ends`
(``step_ends[k]`` is the end of step ``k``) and each request's :class:`Segment` list:
token ``first_token + j`` of a segment arrived at ``step_ends[start_step + j]`` for
``0 <= j < n_tokens``. Segments only change at preemption, so a request has
``1 + preemptions`` of them (at most). :func:`token_times` expands them.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

Rid = Hashable


class Segment(NamedTuple):
    """Tokens ``first_token .. first_token+n_tokens-1`` arrived at the ends of steps
    ``start_step .. start_step+n_tokens-1`` (one token per step)."""

    start_step: int
    first_token: int
    n_tokens: int


class Finished(NamedTuple):
    """A request that produced its last token in this step."""

    rid: Rid
    prompt_tokens: int
    output_tokens: int
    submitted: float
    first_token_step: int
    preemptions: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class StepResult:
    index: int
    start: float
    end: float
    batch: int  # sequences in the step (decodes + prefill chunks)
    num_decodes: int
    prefill_tokens: int
    kv_tokens: int  # KV held during the step (after its allocation)
    first_token: tuple[Rid, ...]  # rids that got their first token at `end`
    finished: tuple[Finished, ...]  # requests that got their last token at `end`
    preempted: tuple[Rid, ...]  # rids preempted when this step was planned


class RequestTooLarge(ValueError):
    """prompt + output tokens exceed the engine's KV capacity: it could never finish."""


def token_times(step_ends: Iterable[float] | array[float], segments: Iterable[Segment]) -> list[float]:
    """Arrival time of each output token, in token order, from a request's segments."""
    ends = step_ends if isinstance(step_ends, array | list) else list(step_ends)
    out: list[float] = []
    for s in segments:
        out.extend(ends[s.start_step : s.start_step + s.n_tokens])
    return out
