"""One load picture for several router processes: each publishes its own row, all sum.

A router spread over several processes (workers on one host, replicas on several) is
one logical router only if every process decides on the load **all** of them placed.
Each process (a *holder*) owns the counts of the requests it dispatched and publishes
them — never per token, once per tick — as a :class:`Row` of per-backend aggregates
(the :class:`~slorouter.state.load.BackendLoad` counters, residents per tier, the slack
summary) plus its queued requests per tier and a decayed count of its arrivals. A
policy's view of a backend is its own live load plus the sum of the other holders'
latest rows (:class:`LoadSync`).

How it is kept without touching the per-request path: the tracker's loads hold
*own + remote*; :meth:`LoadSync.absorb` adds the difference between the new sum of the
others' rows and the sum it added last time, and :meth:`LoadSync.row` publishes
*combined − remote* (its own counts). Per-token updates stay local and cost nothing more.

Staleness and herding. Another holder's placements are seen one tick late at most (plus
the store's latency). Within a tick several holders could all pick the same "fullest
feasible" server. The **quota** prevents that: until its next update a holder may use
only its share ``s`` of a server's remaining room — each request it places there is
counted ``1/s`` times (the extra ``1/s − 1`` is a *phantom* load standing for what the
others are expected to place meanwhile, removed at the next absorb, when their real
placements are visible). ``s`` is the holder's recent share of all arrivals (decayed
counts published in the rows).

Stores (:class:`Store`): :class:`MemoryStore` (in-process; the simulator, with a
visibility delay), :mod:`slorouter.state.shm` (workers on one host) and
:mod:`slorouter.state.redis_store` (replicas across hosts). A row older than the store's
TTL is dropped: a dead holder's share vanishes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from slorouter.state.load import SLACK_WINDOW, BackendLoad, SlackEntry, banked

Counters = tuple[int, int, int, int, int, int]  # BackendLoad.as_tuple() order
_ZERO: Counters = (0, 0, 0, 0, 0, 0)
ROW_VERSION = 1


@dataclass(frozen=True, slots=True)
class Row:
    """What one holder publishes (see module docs). Only backends it has load on."""

    holder: str
    at: float  # the publisher's clock when built
    arrivals: float  # decayed count of the holder's arrivals (for shares)
    loads: Mapping[str, Counters] = field(default_factory=dict)
    tiers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    slack: Mapping[str, tuple[SlackEntry, ...]] = field(default_factory=dict)
    queued: Mapping[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": ROW_VERSION,
                "holder": self.holder,
                "at": self.at,
                "arrivals": self.arrivals,
                "loads": self.loads,
                "tiers": self.tiers,
                "slack": self.slack,
                "queued": self.queued,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Row:
        """Parse a published row; raises ValueError on anything malformed (a store
        skips such a row rather than routing on garbage)."""
        try:
            d: Any = orjson.loads(raw)
            if d.get("v") != ROW_VERSION:
                raise ValueError(f"row version {d.get('v')!r}, expected {ROW_VERSION}")
            return cls(
                holder=str(d["holder"]),
                at=float(d["at"]),
                arrivals=float(d["arrivals"]),
                loads={str(k): tuple(int(x) for x in v) for k, v in d["loads"].items()},  # type: ignore[misc]
                tiers={str(k): {str(t): int(n) for t, n in v.items()} for k, v in d["tiers"].items()},
                slack={
                    str(k): tuple((float(e[0]), int(e[1]), float(e[2]), float(e[3])) for e in v)
                    for k, v in d["slack"].items()
                },
                queued={str(k): int(v) for k, v in d["queued"].items()},
            )
        except (KeyError, TypeError, AttributeError, IndexError, orjson.JSONDecodeError) as e:
            raise ValueError(f"malformed row: {e}") from e


class Store(Protocol):
    """Where rows meet. ``publish`` replaces this holder's row; ``rows`` returns every
    live row (its own included) — both synchronous views of what the store last held
    (networked stores do their I/O in a background task)."""

    def publish(self, row: Row) -> None: ...

    def rows(self) -> Mapping[str, Row]: ...


class MemoryStore:
    """In-process store. ``delay_s``: a published row becomes visible to readers only
    that much later (a model of the store's latency); ``ttl_s``: rows older than that
    vanish. Time is whatever clock value the callers pass (``now``)."""

    def __init__(self, delay_s: float = 0.0, ttl_s: float = math.inf) -> None:
        self.delay_s = delay_s
        self.ttl_s = ttl_s
        self._pending: dict[str, list[tuple[float, Row]]] = {}
        self._visible: dict[str, Row] = {}
        self.now = 0.0

    def publish(self, row: Row) -> None:
        if self.delay_s <= 0:
            self._visible[row.holder] = row
        else:
            self._pending.setdefault(row.holder, []).append((row.at + self.delay_s, row))

    def rows(self) -> Mapping[str, Row]:
        now = self.now
        for holder, q in self._pending.items():
            while q and q[0][0] <= now:
                self._visible[holder] = q.pop(0)[1]
        if self.ttl_s < math.inf:
            for h in [h for h, r in self._visible.items() if now - r.at > self.ttl_s]:
                del self._visible[h]
        return self._visible


class LoadSync:
    """One holder's side of the shared picture, over a tracker (see module docs)."""

    def __init__(
        self,
        tracker: Any,
        holder: str,
        *,
        quota: bool = True,
        half_life_s: float = 10.0,
        wall: Callable[[], float] | None = None,
    ) -> None:
        """``wall``: the clock rows are stamped with and aged by — shared by every holder
        (``time.time`` across processes; default: the tracker's clock, as in the
        simulator)."""
        self.tracker = tracker
        self.wall = wall or tracker.clock.now
        self.holder = holder
        self.quota = quota
        self.half_life_s = half_life_s
        self._remote: dict[str, Counters] = {}
        self._remote_tiers: dict[str, dict[str, int]] = {}
        self._phantom: dict[str, list[float]] = {}  # backend -> added counters (floats)
        self._arrivals = 0.0
        self._arrivals_at = 0.0
        self.share = 1.0  # this holder's share of recent arrivals (1: alone)
        self.peers = 0  # other live holders at the last absorb
        self.age_s = 0.0  # age of the oldest other row used at the last absorb
        self.absorbed_at: float | None = None
        tracker.sync = self

    # -- the hot path (called by the tracker) ---------------------------------------

    def on_arrival(self, now: float) -> None:
        self._decay(now)
        self._arrivals += 1.0

    def on_attach(self, load: BackendLoad, prompt: int, peak: int, prefilling: bool) -> None:
        """A request placed here by this holder: add the phantom share of the others'."""
        if not self.quota or self.share >= 1.0:
            return
        k = 1.0 / max(self.share, 0.05) - 1.0
        ph = self._phantom.get(load.backend_id)
        if ph is None:
            ph = self._phantom[load.backend_id] = [0.0] * 6
        adds = (1.0, prompt, 0.0, peak, 1.0 if prefilling else 0.0, prompt if prefilling else 0.0)
        cur = list(load.as_tuple())
        for i, a in enumerate(adds):
            if a:
                before = round(ph[i])
                ph[i] += k * a
                cur[i] += round(ph[i]) - before
        _set(load, cur)

    def own_running(self, backend_id: str) -> int:
        """Requests this holder itself has on a backend (its row's count)."""
        load = self.tracker.loads.get(backend_id)
        if load is None:
            return 0
        ph = self._phantom.get(backend_id)
        return int(load.running - self._remote.get(backend_id, _ZERO)[0] - (round(ph[0]) if ph else 0))

    # -- the tick --------------------------------------------------------------------

    def _decay(self, now: float) -> None:
        dt = now - self._arrivals_at
        if dt > 0:
            self._arrivals *= 0.5 ** (dt / self.half_life_s)
            self._arrivals_at = now

    def row(self, now: float) -> Row:
        """This holder's own counts (combined − remote − phantom); ``now`` on the
        tracker's clock."""
        self._decay(now)
        t = self.tracker
        loads: dict[str, Counters] = {}
        tiers: dict[str, dict[str, int]] = {}
        slack: dict[str, tuple[SlackEntry, ...]] = {}
        for bid, load in t.loads.items():
            cur = load.as_tuple()
            rem = self._remote.get(bid, _ZERO)
            ph = self._phantom.get(bid)
            own = tuple(
                c - r - (round(ph[i]) if ph else 0) for i, (c, r) in enumerate(zip(cur, rem, strict=True))
            )
            if any(own):
                loads[bid] = own
            rt = self._remote_tiers.get(bid, {})
            ot = {k: n - rt.get(k, 0) for k, n in load.tier_counts.items() if n - rt.get(k, 0)}
            if ot:
                tiers[bid] = ot
            s = load.own_slack
            if s:
                slack[bid] = s
        return Row(self.holder, self.wall(), self._arrivals, loads, tiers, slack, dict(t.queued))

    def absorb(self, rows: Mapping[str, Row], now: float) -> None:
        """Take in the others' latest rows: the view becomes own + Σ others (``now`` on
        the tracker's clock; rows are aged on the wall clock)."""
        t = self.tracker
        self._decay(now)
        wall = self.wall()
        others = [r for h, r in rows.items() if h != self.holder]
        sums: dict[str, list[int]] = {}
        tsum: dict[str, dict[str, int]] = {}
        ssum: dict[str, list[SlackEntry]] = {}
        queued: dict[str, int] = {}
        total = self._arrivals
        oldest = 0.0
        for r in others:
            age = max(0.0, wall - r.at)
            oldest = max(oldest, age)
            total += r.arrivals * 0.5 ** (age / self.half_life_s)
            for bid, c in r.loads.items():
                acc = sums.get(bid)
                if acc is None:
                    sums[bid] = list(c)
                else:
                    for i in range(6):
                        acc[i] += c[i]
            for bid, tc in r.tiers.items():
                d = tsum.setdefault(bid, {})
                for k, n in tc.items():
                    d[k] = d.get(k, 0) + n
            for bid, se in r.slack.items():
                ssum.setdefault(bid, []).extend(se)
            for k, n in r.queued.items():
                queued[k] = queued.get(k, 0) + n
        self.peers = len(others)
        self.age_s = oldest
        self.share = 1.0 if not others or total <= 0 else max(self._arrivals / total, 0.0)
        self.absorbed_at = now
        touched = set(sums) | set(self._remote) | set(self._phantom) | set(tsum) | set(self._remote_tiers)
        touched |= set(ssum) | {b for b, ld in t.loads.items() if ld.remote_slack}
        for bid in touched:
            load = t.loads.get(bid)
            if load is None:
                continue
            new = tuple(sums.get(bid, _ZERO))
            old = self._remote.get(bid, _ZERO)
            ph = self._phantom.pop(bid, None)
            cur = list(load.as_tuple())
            for i in range(6):
                cur[i] += new[i] - old[i] - (round(ph[i]) if ph is not None else 0)
            _set(load, cur)
            if any(new):
                self._remote[bid] = new  # type: ignore[assignment]
            else:
                self._remote.pop(bid, None)
            nt = tsum.get(bid, {})
            ot = self._remote_tiers.get(bid, {})
            for k in set(nt) | set(ot):
                n = load.tier_counts.get(k, 0) + nt.get(k, 0) - ot.get(k, 0)
                if n:
                    load.tier_counts[k] = n
                else:
                    load.tier_counts.pop(k, None)
            if nt:
                self._remote_tiers[bid] = nt
            else:
                self._remote_tiers.pop(bid, None)
            entries = ssum.get(bid)
            load.remote_slack = tuple(sorted(entries, key=banked)[:SLACK_WINDOW]) if entries else ()
            t.changed(bid)
        t.remote_queued = queued


def _set(load: BackendLoad, c: list[int]) -> None:
    (
        load.running,
        load.prompt_tokens,
        load.output_tokens,
        load.peak_kv,
        load.prefilling,
        load.prefill_tokens,
    ) = c
