"""Per-token deadlines (DSLO): which output tokens arrived on schedule.

Token ``i`` (the first is ``i = 0``) of a request is due ``i·TPOT`` after ``due0``, the
first token's due time (arrival + TTFT; the load generator's arrival is its send time,
the router's and the simulator's the request's arrival at the router). A token that
arrived at ``t`` is **on time** when::

    t - due0 <= i * tpot + EPS

This one predicate decides every count below; the offline simulator evaluates the same
expression vectorized (``slorouter.sim.fleet_metrics``), so the three callers agree to
the token on the same times.

Several tokens may arrive together (one streamed chunk carrying ``k`` tokens): all of
them at the chunk's time. Their due times differ, so a late chunk may still carry
on-time tokens at its end (the later tokens are due later).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

EPS = 1e-9  # seconds of slack on every comparison (float noise, not a tolerance)


def on_time(late_s: float, tpot_s: float, index: int) -> bool:
    """Is token ``index``, arriving ``late_s`` after ``due0``, on schedule?"""
    return late_s <= index * tpot_s + EPS


def first_on_time_index(late_s: float, tpot_s: float) -> int | None:
    """The smallest token index that would be on time arriving ``late_s`` after ``due0``
    (None: none would, when ``tpot_s == 0`` and ``late_s > EPS``)."""
    if late_s <= EPS:
        return 0
    if tpot_s <= 0:
        return None
    i = max(0, math.ceil((late_s - EPS) / tpot_s))
    # fix the rounding of the division so that exactly the predicate above decides
    while i > 0 and on_time(late_s, tpot_s, i - 1):
        i -= 1
    while not on_time(late_s, tpot_s, i):
        i += 1
    return i


def on_time_in_chunk(late_s: float, tpot_s: float, first: int, count: int) -> int:
    """How many of tokens ``first .. first+count-1``, all arriving ``late_s`` after
    ``due0``, are on schedule."""
    if count <= 0:
        return 0
    if on_time(late_s, tpot_s, first):
        return count
    i0 = first_on_time_index(late_s, tpot_s)
    if i0 is None:
        return 0
    return max(0, first + count - max(first, i0))


def cumulative_tokens(k: int, n: int) -> list[int]:
    """Tokens arrived after each of ``k`` chunks, for ``n`` tokens in all, when the
    server says how many tokens it sent (``n``, from ``usage``) but not how many each
    chunk carried: ``k >= n``: chunk ``j`` carries token ``j`` (chunks past the ``n``-th
    carry none); ``k < n``: an even spread, ``⌊(j+1)·n/k⌋`` tokens after chunk ``j``."""
    if k <= 0 or n <= 0:
        return [0] * max(k, 0)
    if k >= n:
        return [min(j + 1, n) for j in range(k)]
    return [((j + 1) * n) // k for j in range(k)]


@dataclass(frozen=True, slots=True)
class TokenCheck:
    tokens: int  # output tokens judged
    on_time: int  # of them, on schedule
    first_on_time: bool  # token 0 arrived by due0 (the TTFT was met)

    @property
    def all_on_time(self) -> bool:
        return self.tokens > 0 and self.on_time == self.tokens


def check_chunks(times: Sequence[float], counts: Sequence[int], due0: float, tpot_s: float) -> TokenCheck:
    """Judge a stream: chunk ``j`` arrived at ``times[j]`` carrying ``counts[j]`` tokens
    (in order). One token per chunk: ``counts = [1] * len(times)``."""
    first = 0
    good = 0
    first_ok = False
    for t, c in zip(times, counts, strict=True):
        if c <= 0:
            continue
        late = t - due0
        if first == 0:
            first_ok = on_time(late, tpot_s, 0)
        good += on_time_in_chunk(late, tpot_s, first, c)
        first += c
    return TokenCheck(first, good, first_ok)
