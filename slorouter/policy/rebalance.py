"""Dynamic tier bins for ``polyserve``: servers move between bins as load shifts.

PolyServe keeps one bin of servers per TPOT tier and re-assigns servers between bins
as the traffic mix moves. Here the moves are policy-private state (an override of
``Backend.tier`` per server), decided synchronously inside ``select`` when — and only
when — a request finds no feasible server where it would otherwise go, so the live
proxy and the fleet simulator run exactly the same code and a decision stays cheap
(nothing is examined while the bins cope).

Two moves, each one server at a time, each taken by the request that needs it, each
only from a **donor bin with room to spare** (after giving the server, the donor's other
servers still have at least one server's worth of unused capacity, :func:`spare`; no
request of the donor's tiers waits in the router queue; the donor keeps at least one
server):

* **lend** (tight → loose): a request whose own bin has no feasible server takes the
  least loaded server of a tighter bin that holds **nothing tighter than the request**
  (in practice: an empty one) and on which it is feasible. Tried before upward
  overflow: an overflowed request may use only ``overflow_headroom`` of a tight
  server's budget, a lent server is filled to the looser TPOT. Since such a server
  holds no tighter work, no resident ever sits on a server judged by a looser TPOT
  than its own.
* **borrow** (loose → tight): a request with a TPOT that found no feasible server in its
  own bin nor (by overflow) in a tighter one takes the least loaded server of a looser
  bin on which it is feasible *judged by its own, tighter TPOT*
  (:func:`~slorouter.policy.feasibility.assess` at future-peak KV: the looser residents
  already fit under the tighter pace, so none of them is hurt, and every later
  placement there is judged by the tighter TPOT).

A server moves only when it can serve the request that moved it at once; nothing is
drained by force (measured: draining servers out of a busy tight bin on a loose bin's
demand cost the tight tier more than it gave the loose one).

**Hysteresis.** A server that moved stays in its new bin for at least ``hold_s``
seconds, and a bin receives at most one server per ``receive_s`` (default 2 s; one
deferral does not empty a donor, and a burst of tight requests that need servers at
once is not held for one move per ``hold_s`` — with 10 s, long tight-TTFT prompts of the
code trace went late waiting for the next borrow); the room-to-spare rule means neither
move undoes the other while either bin is busy. When the configured bins change (a new
``BackendSet`` with another ``tier`` for a server, e.g. the autoscaler's), the configured
bin wins and the override is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from slorouter.models.base import LatencyView
from slorouter.policy.feasibility import FeasibilityParams, Need, assess, tightest_tpot
from slorouter.state.backends import BackendSet
from slorouter.state.load import BackendLoad
from slorouter.state.snapshot import Snapshot
from slorouter.values import Tightness

_KEEP: Final = 1  # a bin never gives away its last server
_ROOM: Final = 1.0  # a donor bin keeps at least one server's worth of spare room


class BinView(Protocol):
    """What the rebalancer reads of the policy's bins (tight → loose)."""

    taus: list[Tightness]
    bins: list[tuple[str, ...]]
    tpot_by_tier: dict[str, float]


@dataclass(frozen=True, slots=True)
class RebalanceParams:
    enabled: bool = True
    hold_s: float = 10.0  # a moved server stays in its new bin at least this long
    receive_s: float = 2.0  # a bin receives at most one server per this long


class BinMoves:
    """The policy-private bin of every moved server, and when it moved."""

    __slots__ = ("_at", "_home", "_into", "_tau", "moves", "params")

    def __init__(self, params: RebalanceParams | None = None) -> None:
        self.params = params or RebalanceParams()
        self._tau: dict[str, Tightness] = {}  # server -> tightness of the bin it moved to
        self._home: dict[str, str] = {}  # server -> its configured tier when it moved
        self._at: dict[str, float] = {}  # server -> time of its last move
        self._into: dict[Tightness, float] = {}  # bin -> time it last received a server
        self.moves = 0

    def override(self, backends: BackendSet) -> Mapping[str, Tightness]:
        """Bin tightness of the moved servers of ``backends`` (stale overrides dropped)."""
        for bid in [b for b, home in self._home.items() if (x := backends.get(b)) is None or x.tier != home]:
            del self._tau[bid], self._home[bid]
        return self._tau

    def export(self) -> list[list[Any]]:
        """Every move as ``[server, tightness kind, tightness value, home tier, at]``
        (JSON types): what other router processes adopt (:meth:`adopt`)."""
        return [[b, t.kind, t.value, self._home[b], self._at[b]] for b, t in self._tau.items()]

    def adopt(self, moves: Iterable[Sequence[Any]]) -> bool:
        """Merge moves made by other processes: per server the most recent move wins (a
        move is a fact with a time; two processes moving one server within a tick agree
        after the next). True when anything changed."""
        changed = False
        for m in moves:
            try:
                bid, kind, value, home, at = str(m[0]), int(m[1]), float(m[2]), str(m[3]), float(m[4])
            except (TypeError, ValueError, IndexError):
                continue
            if at <= self._at.get(bid, -math.inf):
                continue
            tau = Tightness(kind, value)
            self._tau[bid], self._home[bid], self._at[bid] = tau, home, at
            self._into[tau] = max(self._into.get(tau, -math.inf), at)
            changed = True
        if changed:
            self.moves += 1
        return changed

    def may_receive(self, tau: Tightness, now: float) -> bool:
        """A bin receives at most one server per ``receive_s``."""
        at = self._into.get(tau)
        return at is None or now - at >= self.params.receive_s

    def may_move(self, bid: str, now: float) -> bool:
        at = self._at.get(bid)
        return at is None or now - at >= self.params.hold_s

    def move(self, bid: str, tau: Tightness, backends: BackendSet, now: float) -> None:
        b = backends.get(bid)
        if b is None:
            return
        self._tau[bid] = tau
        self._home[bid] = b.tier
        self._at[bid] = now
        self._into[tau] = now
        self.moves += 1

    def lend(
        self,
        need: Need,
        view: BinView,
        snap: Snapshot,
        fp: FeasibilityParams,
        tiers_of: Mapping[Tightness, Iterable[str]],
    ) -> str | None:
        """The least loaded server of a tighter bin with room to spare that holds nothing
        tighter than ``need`` and on which ``need`` is feasible (None: none may go)."""
        own = need.tightness
        host = own.tpot
        donors = [i for i, t in enumerate(view.taus) if t < own]
        return self._take(need, view, snap, fp, tiers_of, donors, host)

    def borrow(
        self,
        need: Need,
        view: BinView,
        snap: Snapshot,
        fp: FeasibilityParams,
        tiers_of: Mapping[Tightness, Iterable[str]],
    ) -> str | None:
        """The least loaded server of a looser bin with spare room on which ``need`` is
        feasible judged by its own, tighter TPOT (None: none)."""
        own = need.tightness
        if not own.paced:
            return None
        donors = [i for i, t in enumerate(view.taus) if t > own]
        return self._take(need, view, snap, fp, tiers_of, donors, own.tpot)

    def _take(
        self,
        need: Need,
        view: BinView,
        snap: Snapshot,
        fp: FeasibilityParams,
        tiers_of: Mapping[Tightness, Iterable[str]],
        donors: list[int],
        host: float,
    ) -> str | None:
        now, loads, lat = snap.now, snap.loads, snap.latency
        best, best_s = None, 0.0
        for i in donors:
            tau = view.taus[i]
            ids = view.bins[i]
            if len(ids) <= _KEEP or _queued(snap, tiers_of.get(tau, ())):
                continue
            room: float | None = None
            for bid in ids:
                if not self.may_move(bid, now):
                    continue
                load = loads[bid]
                t = host
                if load.tier_counts:
                    t = min(t, tightest_tpot(load, view.tpot_by_tier))
                    if t < need.tightness.tpot:  # holds tighter work: it stays where it is
                        continue
                s = assess(need, load, lat.linear(bid), lat.limits(bid), t, fp)
                if s < 0 or (best is not None and s >= best_s):
                    continue
                if room is None:
                    room = sum(spare(loads[b], lat, b, tau) for b in ids)
                if room - spare(load, lat, bid, tau) >= _ROOM:
                    best, best_s = bid, s
        return best


def spare(load: BackendLoad, lat: LatencyView, bid: str, tau: Tightness) -> float:
    """Unused share (0..1) of a server's capacity in a bin of tightness ``tau``: for a
    TPOT bin, ``1 − (step at future-peak KV − c0) / (τ − c0)``; for a loose bin, the
    room left in sequences and KV."""
    lim = lat.limits(bid)
    used = max(load.running / lim.max_num_seqs, load.peak_kv / lim.kv_capacity_tokens)
    if tau.paced:
        lin = lat.linear(bid)
        span = tau.value - lin.c0_s
        if span > 0:
            used = max(used, (lin.c_batch_s * load.running + lin.c_kv_s * load.peak_kv) / span)
        else:
            used = 1.0
    return 0.0 if used >= 1.0 else 1.0 - used


def _queued(snap: Snapshot, tiers: Iterable[str]) -> bool:
    q = snap.queued
    return any(q.get(t, 0) > 0 for t in tiers)
