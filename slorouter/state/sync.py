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
only its share ``s`` of a server's remaining room (``s``: its recent share of all
arrivals, from decayed counts published in the rows; equal shares while no holder has
had a request — a burst at a cold start is split, not placed in full by each). Two parts:

* each request it places there is counted ``1/s`` times (the extra ``1/s − 1``, of the
  typical size it places, is a *phantom* load standing for what the others are expected
  to place meanwhile, removed once every other row is newer than it: their real
  placements are then visible);
* its *first* placement is not free either: the room the synced view leaves on a server
  is shared out along a line on which every holder has a stretch as long as its share
  (holders ordered by name, the line's origin shifted per server by a hash of its id,
  so each holder is early on some servers and late on others). A holder whose stretch
  starts at ``u`` (0 ≤ u < 1) judges TPOT as if ``u/s − 1`` requests of the typical
  size were placed ahead of its own (:attr:`BackendLoad.ahead`). With equal shares,
  of R holders that all see a server with room for ``x`` requests as the best, at most
  ``⌈x⌉`` and at least ``min(R, ⌊x⌋)`` judge it feasible — without this every one did.

The phantom is in the tracker's counters (so every policy check sees it) and marked on
the load (:attr:`BackendLoad.phantom`): the latency model's labels — the global batch
and KV a step or a first token ran at — leave it out, as it is not a running sequence.

The row also carries what this holder's latency model learned from its recent responses,
and the others' are fed into its model (``learning``: :mod:`slorouter.state.learning`):
every holder routes by the model one router would have learned from all the responses.

Stores (:mod:`slorouter.state.store`): the in-process one (the simulator, with a
visibility delay), :mod:`slorouter.proxy.shmstore` (workers on one host) and
:mod:`slorouter.proxy.redisstore` (replicas across hosts). A row older than the store's
TTL is dropped: a dead holder's share vanishes.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from slorouter.state.learning import LearningShare
from slorouter.state.load import SLACK_WINDOW, BackendLoad, SlackEntry, banked
from slorouter.state.rows import F64, I64, SLACK_PER_ROW, Row

__all__ = ["LoadSync", "Row"]

# other holders' slack entries kept per backend (the least banked): the interference check
# looks for the smallest slack on a server; the own newest residents add up to 8 more
REMOTE_SLACK = SLACK_WINDOW // 2


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
        control: Callable[[], Any] | None = None,
        adopt: Callable[[list[Any]], None] | None = None,
        learning: LearningShare | None = None,
    ) -> None:
        """``wall``: the clock rows are stamped with and aged by — shared by every holder
        (``time.time`` across processes; default: the tracker's clock, as in the
        simulator). ``control`` / ``adopt``: the policy's shared control-plane state,
        published with the row and merged from the others' (bin moves). ``learning``:
        what this holder's latency model learns from, published with the row, and the
        others' fed into it (:mod:`slorouter.state.learning`)."""
        self.learning = learning
        self.control = control
        self.adopt = adopt
        self.tracker = tracker
        self.wall = wall or tracker.clock.now
        self.holder = holder
        self.quota = quota
        self.half_life_s = half_life_s
        # per backend of the tracker's set (positions in self._ids): what the others'
        # rows added to the loads at the last absorb, and the phantom since then
        self._ids: tuple[str, ...] = ()
        self._pos: dict[str, int] = {}
        self._tiers: tuple[str, ...] = ()
        self._tpos: dict[str, int] = {}
        self._of: object = None  # the backend set the layout is for
        self._remote: I64 = np.zeros((0, 6), dtype=np.int64)
        self._remote_tiers: I64 = np.zeros((0, 0), dtype=np.int64)
        # the phantom: per backend the counts added for the others' expected placements
        # (ints, as applied), the rounding remainders, and a log (wall time, backend,
        # counts) so each is removed once the others' rows are newer than it
        self._phantom: dict[str, list[int]] = {}
        self._ph_frac: dict[str, list[float]] = {}
        self._ph_log: deque[tuple[float, str, list[int]]] = deque()
        self._layouts: dict[tuple[str, ...], Any] = {}  # a row's ids -> positions here
        self._phase: list[float] = []  # per backend: where its share line starts (crc32)
        self._phase_of: object = None
        self._slacked: set[int] = set()  # positions given remote slack at the last absorb
        self._arrivals = 0.0
        self._arrivals_at = 0.0
        self._placed = 0
        self._mean_prompt = 0.0
        self._mean_peak = 0.0
        self.share = 1.0  # this holder's share of recent arrivals (1: alone)
        self.peers = 0  # other live holders at the last absorb
        self.age_s = 0.0  # age of the oldest other row used at the last absorb
        self.absorbed_at: float | None = None
        # own placements and departures not yet in a published row; ``on_due`` is called
        # when the first one happens after a publish (event-driven publishing: see
        # SyncLoop / the simulator's SyncDriver, which publish early then)
        self.unpublished = 0
        self.on_due: Callable[[], None] | None = None
        tracker.sync = self

    # -- the hot path (called by the tracker) ---------------------------------------

    def on_arrival(self, now: float) -> None:
        self._decay(now)
        self._arrivals += 1.0

    def on_attach(self, load: BackendLoad, prompt: int, peak: int, prefilling: bool) -> None:
        """A request placed here by this holder: add the phantom share of the others'.

        What the others place meanwhile is counted in requests (``1/s − 1`` per own
        placement) of the *typical* size — the running mean of the prompts and peak KV
        this holder places — not this request's: their requests are not copies of it."""
        self._changed()
        n = self._placed = self._placed + 1
        a = 1.0 / min(n, 256)  # a running mean that settles into a moving one
        self._mean_prompt += a * (prompt - self._mean_prompt)
        self._mean_peak += a * (peak - self._mean_peak)
        if not self.quota or self.share >= 1.0:
            return
        k = 1.0 / max(self.share, 0.05) - 1.0
        bid = load.backend_id
        frac = self._ph_frac.get(bid)
        if frac is None:
            frac = self._ph_frac[bid] = [0.0] * 6
            self._phantom[bid] = [0] * 6
        mp, mk = self._mean_prompt, self._mean_peak
        adds = (1.0, mp, 0.0, mk, 1.0, mp)  # the others' requests arrive still prefilling
        incs = [0] * 6
        for i, x in enumerate(adds):
            if x:
                frac[i] += k * x
                incs[i] = math.floor(frac[i])
                frac[i] -= incs[i]
        if any(incs):
            ph = self._phantom[bid]
            _set(load, [c + d for c, d in zip(load.as_tuple(), incs, strict=True)])
            for i, d in enumerate(incs):
                ph[i] += d
            _mark(load, ph)
            self._ph_log.append((self.wall(), bid, incs))

    def on_detach(self) -> None:
        """A request this holder placed left its server (finished, failed, moved)."""
        self._changed()

    def _changed(self) -> None:
        self.unpublished += 1
        if self.unpublished == 1 and self.on_due is not None:
            self.on_due()

    def own_running(self, backend_id: str) -> int:
        """Requests this holder itself has on a backend (its row's count)."""
        load = self.tracker.loads.get(backend_id)
        if load is None:
            return 0
        ph = self._phantom.get(backend_id)
        i = self._pos.get(backend_id)
        rem = int(self._remote[i, 0]) if i is not None else 0
        return int(load.running - rem - (ph[0] if ph else 0))

    def own(self, backend_id: str) -> tuple[int, ...]:
        """This holder's own counters of a backend (what its row publishes), in
        :meth:`BackendLoad.as_tuple` order."""
        load = self.tracker.loads.get(backend_id)
        if load is None:
            return (0,) * 6
        i = self._pos.get(backend_id)
        rem = self._remote[i].tolist() if i is not None else [0] * 6
        ph = self._phantom.get(backend_id) or [0] * 6
        return tuple(int(c - r - p) for c, r, p in zip(load.as_tuple(), rem, ph, strict=True))

    def shared(self, backend_id: str) -> tuple[int, ...]:
        """A backend's counters in the shared view: own + the others' latest rows (the
        tracker's load without the quota's phantom)."""
        load = self.tracker.loads.get(backend_id)
        if load is None:
            return (0,) * 6
        ph = self._phantom.get(backend_id) or [0] * 6
        return tuple(int(c - p) for c, p in zip(load.as_tuple(), ph, strict=True))

    # -- the tick --------------------------------------------------------------------

    def _decay(self, now: float) -> None:
        dt = now - self._arrivals_at
        if dt > 0:
            self._arrivals *= 0.5 ** (dt / self.half_life_s)
            self._arrivals_at = now

    def _layout(self) -> None:
        """(Re)build positions when the tracker's backend set changed, keeping what the
        others' rows added to backends that stay."""
        t = self.tracker
        if t.backends is self._of:
            return
        ids = tuple(b.id for b in t.backends.backends)
        tiers = tuple(x.name for x in t.backends.tiers)
        remote = np.zeros((len(ids), 6), dtype=np.int64)
        rtiers = np.zeros((len(ids), len(tiers)), dtype=np.int64)
        for j, bid in enumerate(ids):
            i = self._pos.get(bid)
            if i is not None:
                remote[j] = self._remote[i]
                for k, name in enumerate(tiers):
                    old = self._tpos.get(name)
                    if old is not None:
                        rtiers[j, k] = self._remote_tiers[i, old]
        self._ids, self._tiers = ids, tiers
        self._pos = {b: j for j, b in enumerate(ids)}
        self._tpos = {n: k for k, n in enumerate(tiers)}
        self._remote, self._remote_tiers = remote, rtiers
        self._layouts.clear()
        self._of = t.backends

    def row(self, now: float) -> Row:
        """This holder's own counts (combined − remote − phantom); ``now`` on the
        tracker's clock."""
        self._decay(now)
        self._layout()
        self.unpublished = 0
        t = self.tracker
        loads = [t.loads[b] for b in self._ids]
        cur = np.array([ld.as_tuple() for ld in loads], dtype=np.int64).reshape(len(loads), 6)
        own = cur - self._remote
        for bid, ph in self._phantom.items():
            i = self._pos.get(bid)
            if i is not None and any(ph):
                own[i] -= np.array(ph, dtype=np.int64)
        ctiers = np.zeros_like(self._remote_tiers)
        tpos = self._tpos
        for i, ld in enumerate(loads):
            for name, n in ld.tier_counts.items():
                k = tpos.get(name)
                if k is not None:
                    ctiers[i, k] = n
        otiers = ctiers - self._remote_tiers
        keep = np.flatnonzero(own.any(axis=1) | otiers.any(axis=1))
        sidx: list[int] = []
        sval: list[SlackEntry] = []
        for j, i in enumerate(keep.tolist()):
            entries = loads[i].own_slack
            if entries:
                best = entries if len(entries) <= SLACK_PER_ROW else sorted(entries, key=banked)
                for e in best[:SLACK_PER_ROW]:
                    sidx.append(j)
                    sval.append(e)
        return Row(
            holder=self.holder,
            at=self.wall(),
            arrivals=self._arrivals,
            ids=tuple(self._ids[i] for i in keep.tolist()),
            counters=own[keep],
            tier_names=self._tiers,
            tiers=otiers[keep].astype(np.int32),
            slack_idx=np.array(sidx, dtype=np.int32),
            slack=np.array(sval, dtype=np.float64).reshape(len(sval), 4),
            queued=dict(t.queued),
            control=self.control() if self.control is not None else None,
            learned=self.learning.outgoing() if self.learning is not None else None,
        )

    def _positions(self, row: Row) -> Any:
        """Positions here of a row's backends (-1: not in this tracker's set), and of its
        tiers; cached per distinct list of ids."""
        got = self._layouts.get(row.ids)
        if got is None or got[1] != row.tier_names:
            pos = np.array([self._pos.get(b, -1) for b in row.ids], dtype=np.int64)
            tp = np.array([self._tpos.get(n, -1) for n in row.tier_names], dtype=np.int64)
            if len(self._layouts) > 64:
                self._layouts.clear()
            got = self._layouts[row.ids] = (pos, row.tier_names, tp)
        return got[0], got[2]

    def absorb(self, rows: Mapping[str, Row], now: float) -> None:
        """Take in the others' latest rows: the view becomes own + Σ others (``now`` on
        the tracker's clock; rows are aged on the wall clock)."""
        self._decay(now)
        self._layout()
        t = self.tracker
        wall = self.wall()
        n, nt = len(self._ids), len(self._tiers)
        total = np.zeros((n, 6), dtype=np.int64)
        ttot = np.zeros((n, nt), dtype=np.int64)
        s_pos: list[Any] = []
        s_val: list[F64] = []
        queued: dict[str, int] = {}
        others = [r for h, r in rows.items() if h != self.holder]
        arrivals = self._arrivals
        oldest = 0.0
        before = 0.0  # arrivals of the holders whose names sort before this one's
        for r in others:
            age = max(0.0, wall - r.at)
            oldest = max(oldest, age)
            arrivals_r = r.arrivals * 0.5 ** (age / self.half_life_s)
            arrivals += arrivals_r
            if r.holder < self.holder:
                before += arrivals_r
            for k, v in r.queued.items():
                queued[k] = queued.get(k, 0) + v
            if not r.ids:
                continue
            pos, tp = self._positions(r)
            ok = pos >= 0
            pk = pos[ok]
            total[pk] += r.counters[ok]  # a row names each backend once: no repeated index
            if nt and r.tiers.size:
                tok = tp >= 0
                ttot[pk[:, None], tp[tok][None, :]] += r.tiers[ok][:, tok]
            if len(r.slack_idx):
                sp = pos[r.slack_idx]
                sk = sp >= 0
                s_pos.append(sp[sk])
                s_val.append(r.slack[sk])
        if self.adopt is not None:
            self.adopt([r.control for r in others if r.control is not None])
        if self.learning is not None:
            pos = self._pos
            self.learning.incoming(others, pos.__contains__)
        self.peers = len(others)
        self.age_s = oldest
        if arrivals > 0:
            self.share = 1.0 if not others else max(self._arrivals / arrivals, 0.0)
            self._set_quota(before / arrivals)
        else:  # no holder has had a request yet (a cold start): equal shares, by name
            self.share = 1.0 / (len(others) + 1)
            self._set_quota(sum(r.holder < self.holder for r in others) * self.share)
        self.absorbed_at = now
        # what changes: the others' sums, minus what was added last time, minus the
        # phantom of own placements the others' rows are newer than (theirs are now seen)
        delta = total - self._remote
        cutoff = min((r.at for r in others), default=math.inf)
        log = self._ph_log
        while log and log[0][0] <= cutoff:
            _, bid, incs = log.popleft()
            ph = self._phantom[bid]
            for j, d in enumerate(incs):
                ph[j] -= d
            ld = t.loads.get(bid)
            if ld is not None:
                _mark(ld, ph)
            i = self._pos.get(bid)
            if i is not None:
                delta[i] -= np.array(incs, dtype=np.int64)
        tdelta = ttot - self._remote_tiers
        slack_by: dict[int, tuple[SlackEntry, ...]] = {}
        if s_pos:
            allp = np.concatenate(s_pos)
            allv = np.concatenate(s_val)
            bank = allv[:, 0] + (allv[:, 1] - 1) * allv[:, 3] - allv[:, 2]
            order = np.lexsort((bank, allp))  # by backend, least banked first
            sp, sv = allp[order], allv[order]
            first = np.r_[0, np.flatnonzero(np.diff(sp)) + 1]  # where each backend's run starts
            rank = np.arange(len(sp)) - np.repeat(first, np.diff(np.r_[first, len(sp)]))
            keep = rank < REMOTE_SLACK
            acc: dict[int, list[SlackEntry]] = {}
            for p, e in zip(sp[keep].tolist(), sv[keep].tolist(), strict=True):
                acc.setdefault(p, []).append((e[0], int(e[1]), e[2], e[3]))
            slack_by = {p: tuple(v) for p, v in acc.items()}
        rows_d = np.flatnonzero(delta.any(axis=1)).tolist()
        rows_t = np.flatnonzero(tdelta.any(axis=1)).tolist() if nt else []
        loads = t.loads
        ids, tiers = self._ids, self._tiers
        for i, d in zip(rows_d, delta[rows_d].tolist(), strict=True):
            load = loads.get(ids[i])
            if load is not None:
                _set(load, [a + b for a, b in zip(load.as_tuple(), d, strict=True)])
        for i, td in zip(rows_t, tdelta[rows_t].tolist(), strict=True):
            load = loads.get(ids[i])
            if load is None:
                continue
            tc = load.tier_counts
            for col, dv in enumerate(td):
                if dv:
                    name = tiers[col]
                    v = tc.get(name, 0) + dv
                    if v:
                        tc[name] = v
                    else:
                        tc.pop(name, None)
        for i in set(rows_d) | set(rows_t):
            t.changed(ids[i])
        for i in set(self._slacked) - set(slack_by):
            load = loads.get(ids[i]) if i < len(ids) else None
            if load is not None:
                load.remote_slack = ()
        for i, entries in slack_by.items():
            load = loads.get(ids[i])
            if load is not None:
                load.remote_slack = entries
        self._slacked = set(slack_by)
        self._remote, self._remote_tiers = total, ttot
        t.remote_queued = queued

    def _set_quota(self, start: float) -> None:
        """The herding guard's reservations (module docs): ``start`` is where this
        holder's share begins on the line of all holders' shares (ordered by name)."""
        loads = self.tracker.loads
        s = self.share
        zero = (0.0, 0.0, 0.0)
        if not self.quota or s >= 1.0:
            for bid in self._ids:
                ld = loads.get(bid)
                if ld is not None and ld.ahead[0]:
                    ld.ahead = zero
            return
        s = max(s, 0.05)
        if self._phase_of is not self._of:
            self._phase = [zlib.crc32(b.encode()) / 2.0**32 for b in self._ids]
            self._phase_of = self._of
        mp, mk = self._mean_prompt, self._mean_peak
        for bid, ph in zip(self._ids, self._phase, strict=True):
            ld = loads.get(bid)
            if ld is None:
                continue
            k = (start + ph) % 1.0 / s - 1.0
            ld.ahead = (k, k * mp, k * mk) if k > 0 else zero


def _mark(load: BackendLoad, ph: list[int]) -> None:
    """Tell the load which part of its counters is the phantom (running, KV, prefill)."""
    load.phantom = (ph[0], ph[1] + ph[2], ph[5])


def _set(load: BackendLoad, c: list[int]) -> None:
    (
        load.running,
        load.prompt_tokens,
        load.output_tokens,
        load.peak_kv,
        load.prefilling,
        load.prefill_tokens,
    ) = c
