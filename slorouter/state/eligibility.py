"""Which backends may serve a request: pools of eligible backends, cached per fleet.

A request may be served by a backend when the backend speaks one of the request's
engines' APIs (e.g. TGI's native routes need a TGI engine) and serves its model (a
backend with no ``models`` list serves any; a request without a model goes anywhere).
Requests with the same ``(model, engines)`` share a **pool**; pool 0 is "every backend",
and every request that all backends may serve uses it, so a single-model fleet never
pays for any of this.

A :class:`PoolView` is what a snapshot exposes: the healthy members of one pool, and
per tier the healthy members in fleet order, cached until the backend set or health
changes. Its ``fleet`` key — (backend-set generation, health version, pool) — is a
generation number a policy may key per-fleet caches on (``id()`` values are reused by
Python; these are not).
"""

from __future__ import annotations

import itertools
from typing import Final

from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.values import Engine, RequestInfo

_GENERATIONS = itertools.count(1)  # process-wide: two trackers never share a generation
_MAX_POOLS: Final = 256  # distinct (model, engines) keys remembered (clients choose models)
_ALL = 0

PoolKey = tuple[str, frozenset[Engine] | None]


def serves(b: Backend, model: str, engines: frozenset[Engine] | None) -> bool:
    """Whether backend ``b`` may serve a request for ``model`` over ``engines``' API."""
    if engines is not None and b.engine not in engines:
        return False
    return not b.models or not model or model in b.models


class PoolView:
    """The healthy, eligible backends of one pool (see module docs)."""

    __slots__ = ("_backends", "_by_tier", "fleet", "healthy")

    def __init__(self, backends: BackendSet, healthy: frozenset[str], fleet: tuple[int, int, int]) -> None:
        self._backends = backends
        self.healthy = healthy
        self.fleet = fleet
        self._by_tier: dict[str | None, tuple[Backend, ...]] = {}

    def eligible(self, tier: str | None = None) -> tuple[Backend, ...]:
        """Healthy eligible backends of ``tier`` (None: of every tier), in fleet order."""
        got = self._by_tier.get(tier)
        if got is None:
            bs = self._backends
            pool = bs.backends if tier is None else bs.in_tier(tier)
            healthy = self.healthy
            got = self._by_tier[tier] = tuple(b for b in pool if b.id in healthy)
        return got


class Eligibility:
    """Pools and their views for one tracker (see module docs)."""

    def __init__(self, backends: BackendSet) -> None:
        self._pools: dict[PoolKey, int] = {}
        self._members: list[frozenset[str]] = []
        self._views: dict[int, PoolView] = {}
        self._views_of = -1  # health version the views were built for
        self.set_backends(backends)

    def set_backends(self, backends: BackendSet) -> None:
        self.backends = backends
        self.generation = next(_GENERATIONS)
        self._pools.clear()
        self._members = [frozenset(b.id for b in backends.backends)]
        self._views.clear()

    def pool_of(self, request: RequestInfo | None) -> int:
        """The pool a request belongs to (0: every backend may serve it)."""
        if request is None or (not request.model and request.engines is None):
            return _ALL
        key: PoolKey = (request.model, request.engines)
        got = self._pools.get(key)
        if got is not None:
            return got
        ids = frozenset(b.id for b in self.backends.backends if serves(b, request.model, request.engines))
        if ids == self._members[_ALL]:
            got = _ALL
        else:
            if len(self._pools) >= _MAX_POOLS:  # forget them all; they are cheap to rebuild
                self._pools.clear()
                self._members = self._members[:1]
                self._views.clear()
                self.generation = next(_GENERATIONS)  # pool numbers are reused: new keys
            got = len(self._members)
            self._members.append(ids)
        self._pools[key] = got
        return got

    def configured(self, request: RequestInfo) -> bool:
        """Whether any configured backend (healthy or not) may serve the request."""
        return bool(self._members[self.pool_of(request)])

    def view(self, request: RequestInfo | None, health: Health) -> PoolView:
        pool = self.pool_of(request)
        if health.version != self._views_of:
            self._views.clear()
            self._views_of = health.version
        v = self._views.get(pool)
        if v is None:
            healthy = health.healthy
            if pool != _ALL:
                healthy = healthy & self._members[pool]
            v = self._views[pool] = PoolView(self.backends, healthy, (self.generation, health.version, pool))
        return v
