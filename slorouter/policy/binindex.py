"""A policy-private index of one bin's servers, ordered by an exact load key.

Checking a server costs ~1 µs — 250 µs for a 250-server bin. The index keeps the
servers sorted by

    key = c0 + c_batch·running + c_kv·peak_kv + c_prefill·prefill_tokens / catchup

(with each server's own conservative coefficients), which is the server's predicted
step with a request placed (:func:`~slorouter.policy.feasibility.assess`, ``kv_estimate:
peak``) *minus* the part that depends on the request, ``add = c_batch + c_kv·(prompt +
bound) + c_prefill·prompt / catchup``. With ``lo``/``hi`` the smallest/largest
coefficients in the bin, ``key + lo_add ≤ step ≤ key + hi_add``, so a decision

* **screens**: a server with ``key + lo_add > headroom·τ`` is infeasible — bisect;
* **stops early**: walking keys up (spread) or down (pack) from the screen, once the
  best a remaining server could score is worse than the K-th best found, no remaining
  server can enter the top K; every server it does look at is checked exactly against
  the live snapshot.

So an indexed decision equals a full scan of the bin, as long as the keys are exact.
They are kept exact by the tracker's change feed (:meth:`Tracker.watch
<slorouter.state.tracker.Tracker.watch>`: every backend whose running count, peak KV or
prefill backlog changed) and by re-keying every server when the latency model's
coefficients change (the policy watches for that, see :mod:`slorouter.policy.polyserve`).
Lists are plain sorted Python lists (``bisect``): O(log n) search, O(n) memmove updates —
microseconds at 1,000 servers.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from slorouter.models.base import LatencyView
from slorouter.models.static import LinearStep
from slorouter.state.load import BackendLoad

TOP = "\U0010ffff"  # sorts after every backend id: bisect_right(order, (k, TOP)) = keys ≤ k


class BinIndex:
    __slots__ = ("catchup", "hi", "keys", "lins", "lo", "order")

    def __init__(self, catchup: float) -> None:
        self.catchup = catchup
        self.keys: dict[str, float] = {}
        self.lins: dict[str, LinearStep] = {}  # the coefficients each key was computed with
        self.order: list[tuple[float, str]] = []
        self.lo = (0.0, 0.0, 0.0)  # smallest (c_batch, c_kv, c_prefill) in the bin (or lower)
        self.hi = (0.0, 0.0, 0.0)  # largest (or higher)

    def build(self, ids: tuple[str, ...], loads: Mapping[str, BackendLoad], lat: LatencyView) -> None:
        self.lins = {b: lat.linear(b) for b in ids}
        self.keys = {b: self.key(loads[b], self.lins[b]) for b in ids}
        self.order = sorted((k, b) for b, k in self.keys.items())
        lins = self.lins.values()
        if lins:
            cb = [x.c_batch_s for x in lins]
            ckv = [x.c_kv_s for x in lins]
            cp = [x.c_prefill_s for x in lins]
            self.lo = (min(cb), min(ckv), min(cp))
            self.hi = (max(cb), max(ckv), max(cp))

    def key(self, load: BackendLoad, lin: LinearStep) -> float:
        return (
            lin.c0_s
            + lin.c_batch_s * load.running
            + lin.c_kv_s * load.peak_kv
            + lin.c_prefill_s * load.prefill_tokens / self.catchup
        )

    def refresh(self, bid: str, load: BackendLoad, lin: LinearStep) -> None:
        """Re-key one server from its live load and current coefficients."""
        old = self.keys.get(bid)
        if old is None:
            return
        if self.lins[bid] is not lin:
            self.lins[bid] = lin
            lo, hi = self.lo, self.hi
            self.lo = (min(lo[0], lin.c_batch_s), min(lo[1], lin.c_kv_s), min(lo[2], lin.c_prefill_s))
            self.hi = (max(hi[0], lin.c_batch_s), max(hi[1], lin.c_kv_s), max(hi[2], lin.c_prefill_s))
        key = self.key(load, lin)
        if key == old:
            return
        o = self.order
        i = bisect.bisect_left(o, (old, bid))
        if i < len(o) and o[i][1] == bid:
            del o[i]
        bisect.insort(o, (key, bid))
        self.keys[bid] = key

    def seq_add_lo(self, tokens: int) -> float:
        """A lower bound on what one more sequence of ``tokens`` KV adds to any server's step."""
        lo = self.lo
        return lo[0] + lo[1] * tokens

    def adds(self, p: int, b: int) -> tuple[float, float]:
        """(lo_add, hi_add): bounds on ``step − key`` for a request of prompt ``p`` and
        output bound ``b`` on any server of the bin."""
        lo, hi, c = self.lo, self.hi, self.catchup
        return lo[0] + lo[1] * (p + b) + lo[2] * p / c, hi[0] + hi[1] * (p + b) + hi[2] * p / c
