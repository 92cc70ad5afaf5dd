"""Where the shared-load rows meet (:mod:`slorouter.state.sync`): the store protocol and
the in-process store. The networked stores are :mod:`slorouter.proxy.shmstore` (workers
on one host) and :mod:`slorouter.proxy.redisstore` (replicas across hosts)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from slorouter.state.rows import Row


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
