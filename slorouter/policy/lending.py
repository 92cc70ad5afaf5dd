"""Lending a tighter bin's spare room to looser work (``polyserve``, ``placement: spread``).

On a fleet the router does not scale, a server's unused room is paid for anyway. A
request whose own bin has a feasible server may still run faster on a server of a
tighter bin that has room to spare — and, with closed-loop clients (a user sends its next
request when the last one is answered), faster answers are more requests served. So
under ``spread`` a latency request may be **lent room** on a tighter bin's server when
its predicted step there is lower than on the best server of its own bin *and* the
server keeps room for its own tier:

* the step with the request placed stays within ``overflow_headroom × τ`` — ``τ`` the
  host's TPOT (the tightest among its bin's and its residents') — as for overflow;
* after it, the server still holds ``r`` more requests of its own tier's observed size
  within that budget (seats, KV and step), where ``r`` is **room for the tighter tier's
  expected arrivals**, from what the router observes: every time a request of a bin's
  own tiers is placed on a server of that bin, the number of the bin's own-tier requests
  on that server (itself included) is recorded — the occupancy an arrival meets. ``r``
  = that occupancy's ``quantile`` (default 0.99, decayed with a 30 s half-life, the
  latency model's) minus the own-tier requests the server holds now. A closed loop of
  one tight user meets 1 every time (``r`` = 0 while its request runs, 1 between
  requests); Poisson arrivals at a load that keeps 3 on each server meet up to 7-8 at
  the 0.99 quantile. Until a bin has seen ``MIN_SAMPLES`` placements, ``r`` is at least
  the overflow reserve.

* no work that may use the lender's room — its own tier's, a looser tier's (overflow is
  upward) and, with dynamic bins, a tighter tier's (it borrows looser bins' servers) —
  has been **short of room** (a request found no feasible server in its own bin) within
  the lent request's predicted life (its output bound × the step there): room that was
  needed that recently is not spare. A router that has not yet
  watched for that long lends nothing (in the fleet simulator, lending in the first
  seconds of a run, before any bin had been short, changed which servers the rebalancer
  moved later and cost polyserve-conv's t30 tier 3-9 points of attainment at its ≥ 90 %
  rate, 334 req/s, on seeds 1 and 2).

No lending into a bin while requests of its own tiers wait in the router queue (the
room is theirs), never for a late request, never downward. A lent request never
changes a server's bin (that is :mod:`slorouter.policy.rebalance`'s, which moves whole
servers only when a bin has no feasible room).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from slorouter.models.static import EngineLimits, LinearStep
from slorouter.policy.feasibility import FeasibilityParams, Need, assess, tightest_tpot
from slorouter.state.load import BackendLoad
from slorouter.state.snapshot import Snapshot
from slorouter.values import Tightness

HALF_LIFE_S: Final = 30.0  # the occupancy record forgets as the latency model does
MIN_SAMPLES: Final = 4.0  # decayed placements before the record alone decides
_RESCALE: Final = 50.0  # renormalize the growth factor past e^50


@dataclass(frozen=True, slots=True)
class LendParams:
    enabled: bool = False
    quantile: float = 0.99  # the occupancy quantile a lender keeps room for


class _Record:
    """Decayed histogram of one bin's own-tier occupancy at placement, and the decayed
    mean size (prompt + output bound) of what was placed. Weights are stored grown by
    ``e^{(t − t0)/T}`` so that a decay costs nothing until a renormalization."""

    __slots__ = ("cache", "hist", "kv", "t0", "weight")

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.hist: dict[int, float] = {}
        self.weight = 0.0  # Σ grown weights
        self.kv = 0.0  # Σ grown weight × size
        self.cache: int | None = None


class Occupancy:
    """What a bin's own tiers hold on one of its servers when one of them arrives."""

    __slots__ = ("_recs", "_short", "_t0", "_tau", "quantile")

    def __init__(self, quantile: float = 0.99, half_life_s: float = HALF_LIFE_S) -> None:
        self.quantile = quantile
        self._tau = half_life_s / math.log(2.0)
        self._recs: dict[Tightness, _Record] = {}
        self._short: dict[Tightness, float] = {}  # bin -> last time its own tier found no room in it
        self._t0: float | None = None  # when lending was first considered

    def short(self, bin_tau: Tightness, now: float) -> None:
        """A request of ``bin_tau``'s tiers found no feasible server in its own bin."""
        self._short[bin_tau] = now

    def short_at(self, bin_tau: Tightness, now: float, borrowing: bool) -> float:
        """When a bin whose work may use ``bin_tau``'s room last found no room in its own
        bin: its own, a looser one (overflow is upward) and, with ``borrowing`` (dynamic
        bins: a tighter bin takes a looser bin's server), any; never, but no earlier than
        the first time this was asked (before that nothing was seen: not spare)."""
        if self._t0 is None:
            self._t0 = now
        return max((t for b, t in self._short.items() if borrowing or b >= bin_tau), default=self._t0)

    def observe(self, bin_tau: Tightness, held: int, size: int, now: float) -> None:
        """A request of ``bin_tau``'s tiers placed on one of its servers, which then holds
        ``held`` of them (the request included); ``size`` its prompt + output bound."""
        rec = self._recs.get(bin_tau)
        if rec is None:
            rec = self._recs[bin_tau] = _Record(now)
        g = (now - rec.t0) / self._tau
        if g > _RESCALE:
            f = math.exp(-g)
            rec.hist = {k: w * f for k, w in rec.hist.items() if w * f > 1e-12}
            rec.weight *= f
            rec.kv *= f
            rec.t0, g = now, 0.0
        w = math.exp(g)
        rec.hist[held] = rec.hist.get(held, 0.0) + w
        rec.weight += w
        rec.kv += w * size
        rec.cache = None

    def samples(self, bin_tau: Tightness, now: float) -> float:
        """Decayed number of placements recorded for the bin."""
        rec = self._recs.get(bin_tau)
        return 0.0 if rec is None else rec.weight * math.exp(-(now - rec.t0) / self._tau)

    def level(self, bin_tau: Tightness) -> int:
        """The ``quantile`` of the recorded occupancy (0: nothing recorded)."""
        rec = self._recs.get(bin_tau)
        if rec is None or rec.weight <= 0.0:
            return 0
        if rec.cache is None:
            keys = sorted(rec.hist)
            acc = 0.0
            cum: list[float] = []
            for k in keys:
                acc += rec.hist[k]
                cum.append(acc)
            i = bisect.bisect_left(cum, self.quantile * acc * (1.0 - 1e-12))
            rec.cache = keys[min(i, len(keys) - 1)]
        return rec.cache

    def size(self, bin_tau: Tightness, default: int) -> float:
        """Mean prompt + output bound of the bin's placed requests (``default``: none yet)."""
        rec = self._recs.get(bin_tau)
        return default if rec is None or rec.weight <= 0.0 else rec.kv / rec.weight

    def reserve(self, bin_tau: Tightness, held_now: int, floor: int, now: float) -> int:
        """Requests of the bin's own tiers a server holding ``held_now`` of them must keep
        room for: the occupancy level minus what it holds, at least ``floor`` until the
        bin has ``MIN_SAMPLES`` placements on record."""
        r = max(0, self.level(bin_tau) - held_now)
        if self.samples(bin_tau, now) < MIN_SAMPLES:
            r = max(r, floor)
        return r


def lend_step(
    need: Need,
    load: BackendLoad,
    lin: LinearStep,
    lim: EngineLimits,
    tau: float,
    fp: FeasibilityParams,
    reserve: int,
    size: float,
) -> float:
    """Predicted step with ``need`` lent room on this server, or -1.0 when the server
    cannot lend it: infeasible for ``need`` within ``fp.headroom × tau``, or short of
    room for ``reserve`` more requests of ``size`` tokens of its own tier after it."""
    s = assess(need, load, lin, lim, tau, fp)
    if s < 0 or not reserve:
        return s
    if load.running + 1 + reserve > lim.max_num_seqs:
        return -1.0
    if load.peak_kv + need.p + need.b + reserve * size > lim.kv_capacity_tokens:
        return -1.0
    if s + reserve * (lin.c_batch_s + lin.c_kv_s * size) > fp.headroom * tau:
        return -1.0
    return s


def lender(
    need: Need,
    occ: Occupancy,
    groups: Iterable[tuple[Tightness, Sequence[str], Sequence[str]]],
    snap: Snapshot,
    tpot_by_tier: dict[str, float],
    fp: FeasibilityParams,
    floor: int,
    beat: float,
    borrowing: bool,
) -> str | None:
    """The server that lends ``need`` room with the lowest predicted step below ``beat``
    (the step on the best server of its own bin), among ``groups`` — ``(bin, servers to
    examine, the bin's own tiers)`` of tighter bins whose tiers do not wait — or None."""
    loads, lat, now = snap.loads, snap.latency, snap.now
    best: str | None = None
    for tau_bin, ids, tiers in groups:
        size = occ.size(tau_bin, need.p + need.b)
        short = occ.short_at(tau_bin, now, borrowing)  # room needed within the lent life is not spare
        for bid in ids:
            load = loads[bid]
            tau = tau_bin.tpot
            if load.tier_counts:
                tau = min(tau, tightest_tpot(load, tpot_by_tier))
            held = sum(load.tier_counts.get(t, 0) for t in tiers)
            r = occ.reserve(tau_bin, held, floor, now)
            s = lend_step(need, load, lat.linear(bid), lat.limits(bid), tau, fp, r, size)
            if 0 <= s < beat and now - short >= need.b * s:
                best, beat = bid, s
    return best
