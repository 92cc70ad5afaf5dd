"""The admission queue's books on its on-time lane: predicted work per *home* and
density bucket, and which homes are overloaded (docs/policies.md §9).

A request's home (:class:`~slorouter.values.Scope`) is the group of servers where it
comes first — the whole fleet for most policies, its tier's bin for ``polyserve``.
Requests of different homes do not compete for the same room, so overload is judged
per home: a home is **overloaded** from the moment one of its on-time requests expires
(its latest useful start passed in the queue) until its on-time lane runs empty, or
until one wait limit of the expired request has passed without another expiry — by
then every request that was queued when it expired has been served or answered, and
none of the newer ones missed. (Without the second exit a home fed by many closed-loop
clients, whose lane never empties, stayed overloaded for good after a single expiry.)

Pure bookkeeping, no clock of its own: O(1) per request in and out; the sums a 429's
``Retry-After`` and the arrival-time refusal need cost O(homes in reach × buckets).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class Ledger:
    """On-time work per home and density bucket; overloaded homes (see module docs)."""

    __slots__ = ("_bucket_work", "_cost", "_count", "_home_work", "_hot", "work")

    def __init__(self) -> None:
        self._cost: dict[int, tuple[float, int, Hashable]] = {}  # rid -> (cost, bucket, home)
        self._count: dict[Hashable, int] = {}  # home -> on-time requests
        self._home_work: dict[Hashable, float] = {}  # home -> on-time work (server-s)
        self._bucket_work: dict[Hashable, dict[int, float]] = {}  # home -> bucket -> work
        self._hot: dict[Hashable, float] = {}  # overloaded home -> overloaded until (clock time)
        self.work = 0.0  # predicted server-seconds of the whole on-time lane

    def __contains__(self, rid: object) -> bool:
        return rid in self._cost

    def __bool__(self) -> bool:
        return bool(self._cost)

    def add(self, rid: int, home: Hashable, cost: float, bucket: int) -> None:
        self._cost[rid] = (cost, bucket, home)
        self._count[home] = self._count.get(home, 0) + 1
        self._home_work[home] = self._home_work.get(home, 0.0) + cost
        bw = self._bucket_work.setdefault(home, {})
        bw[bucket] = bw.get(bucket, 0.0) + cost
        self.work += cost

    def remove(self, rid: int) -> bool:
        """``rid`` leaves the on-time lane (False: it was not in it). A home whose lane
        runs empty is no longer overloaded; sums reset there (no float drift survives)."""
        c = self._cost.pop(rid, None)
        if c is None:
            return False
        cost, bucket, home = c
        n = self._count[home] - 1
        if n:
            self._count[home] = n
            self._home_work[home] -= cost
            self._bucket_work[home][bucket] -= cost
        else:
            del self._count[home], self._home_work[home], self._bucket_work[home]
            self._hot.pop(home, None)
        self.work = self.work - cost if self._cost else 0.0
        return True

    def cost_of(self, rid: int) -> float:
        c = self._cost.get(rid)
        return 0.0 if c is None else c[0]

    def bucket_of(self, rid: int) -> int | None:
        c = self._cost.get(rid)
        return None if c is None else c[1]

    def home_of(self, rid: int) -> Hashable:
        c = self._cost.get(rid)
        return None if c is None else c[2]

    def waiting(self, home: Hashable) -> bool:
        """Whether on-time requests of ``home`` wait."""
        return home in self._count

    def work_in(self, reach: Iterable[Hashable]) -> float:
        """Predicted on-time work queued in the homes of ``reach``."""
        return sum(self._home_work.get(h, 0.0) for h in reach)

    def work_denser(self, reach: Iterable[Hashable], bucket: int) -> float:
        """Predicted on-time work queued in the homes of ``reach`` that is denser than
        ``bucket``: what an overloaded queue serves before a request of that bucket."""
        total = 0.0
        for h in reach:
            bw = self._bucket_work.get(h)
            if bw:
                total += sum(w for b, w in bw.items() if b > bucket)
        return total

    # -- overload --------------------------------------------------------------------

    def heat(self, home: Hashable, until: float) -> None:
        """An on-time request of ``home`` expired: the home is overloaded until ``until``
        (or until its lane runs empty; nothing to mark if it already has)."""
        if home in self._count and self._hot.get(home, -1.0) < until:
            self._hot[home] = until

    def cool(self, now: float) -> None:
        """Homes whose overload hold has passed (no expiry for one wait limit) are not
        overloaded any more."""
        if self._hot:
            for h in [h for h, until in self._hot.items() if until <= now]:
                del self._hot[h]

    def hot(self, home: Hashable) -> bool:
        return home in self._hot

    def hot_homes(self) -> frozenset[Hashable]:
        return frozenset(self._hot)

    @property
    def overloaded(self) -> bool:
        """Whether any home is overloaded."""
        return bool(self._hot)
