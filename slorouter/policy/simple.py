"""Load-balancing baselines that ignore SLOs: round-robin, random, least-request,
least-tokens, power-of-two. Honest versions of what users run today: each ranks
*all* healthy backends (so failover has somewhere to go) and never queues."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

from slorouter.policy.base import BasePolicy, Params, PolicyContext, ranked
from slorouter.state.backends import Backend
from slorouter.state.snapshot import Snapshot
from slorouter.values import Decision, Dispatch, RequestInfo


class RoundRobin(BasePolicy):
    kind = "round-robin"

    def __init__(self) -> None:
        self._cursor = 0
        self._pool: tuple[Backend, ...] = ()
        self._ids2: tuple[str, ...] = ()  # the pool's ids, twice: any rotation is one slice

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        pool = snapshot.eligible(None)
        if not pool:
            return self.no_backend(snapshot)
        if pool is not self._pool:
            self._pool = pool
            self._ids2 = tuple(b.id for b in pool) * 2
        n = len(pool)
        i = self._cursor % n
        self._cursor = i + 1
        return Dispatch(self._ids2[i : i + n])


class Random(BasePolicy):
    kind = "random"

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        pool = list(snapshot.eligible(None))
        if not pool:
            return self.no_backend(snapshot)
        self._rng.shuffle(pool)
        return ranked(pool)


class _FewestFirst(BasePolicy):
    """Every eligible backend, in rising order of one figure of its load (``figure``, a
    :class:`~slorouter.state.load.BackendLoad` attribute); ties: config order."""

    figure: ClassVar[str]

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        pool = snapshot.eligible(None)
        if not pool:
            return self.no_backend(snapshot)
        loads, figure = snapshot.loads, self.figure
        return ranked(sorted(pool, key=lambda b: getattr(loads[b.id], figure)))


class LeastRequest(_FewestFirst):
    """Fewest in-flight requests first."""

    kind = "least-request"
    figure = "running"


class LeastTokens(_FewestFirst):
    """Fewest in-flight tokens (prompt + generated so far) first."""

    kind = "least-tokens"
    figure = "kv_tokens"


class PowerOfTwo(BasePolicy):
    """Two random backends, the one with fewer in-flight tokens first."""

    kind = "power-of-two"

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        pool = snapshot.eligible(None)
        if not pool:
            return self.no_backend(snapshot)
        if len(pool) == 1:
            return ranked(pool)
        a, b = self._rng.sample(range(len(pool)), 2)
        loads = snapshot.loads
        x, y = pool[a], pool[b]
        if loads[y.id].kv_tokens < loads[x.id].kv_tokens:
            x, y = y, x
        rest = tuple(p.id for k, p in enumerate(pool) if k not in (a, b))
        return Dispatch((x.id, y.id, *rest))


def _no_params(params: Mapping[str, Any]) -> None:
    Params(params).done()


def _seed_only(params: Mapping[str, Any], ctx: PolicyContext) -> int:
    """The one param of the random baselines: ``seed`` (default: the context's)."""
    p = Params(params)
    seed = p.integer("seed", ctx.seed)
    p.done()
    return seed


def make_round_robin(params: Mapping[str, Any], ctx: PolicyContext) -> RoundRobin:
    _no_params(params)
    return RoundRobin()


def make_random(params: Mapping[str, Any], ctx: PolicyContext) -> Random:
    return Random(_seed_only(params, ctx))


def make_least_request(params: Mapping[str, Any], ctx: PolicyContext) -> LeastRequest:
    _no_params(params)
    return LeastRequest()


def make_least_tokens(params: Mapping[str, Any], ctx: PolicyContext) -> LeastTokens:
    _no_params(params)
    return LeastTokens()


def make_power_of_two(params: Mapping[str, Any], ctx: PolicyContext) -> PowerOfTwo:
    return PowerOfTwo(_seed_only(params, ctx))
