"""``static-partition``: each tier on its own fixed servers, no overflow, no queueing.

What a user gets by running one deployment per SLO tier: a request goes to the servers
whose ``Backend.tier`` is its tier (or shares its TPOT), balanced by fewest in-flight
tokens (``balance: tokens``, default) or requests (``balance: requests``); the engine
queues whatever does not fit. A tier without healthy servers is answered 503. Used with
a fleet split in proportion to each tier's load (the fleet simulator's ``bins: auto``),
this is the honest "separate clusters" baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slorouter.policy.base import BasePolicy, Params, PolicyContext
from slorouter.policy.bins import tier_tightness
from slorouter.state.backends import Backend
from slorouter.state.snapshot import Snapshot
from slorouter.values import Decision, Dispatch, Reject, RequestInfo, Tightness


class StaticPartition(BasePolicy):
    kind = "static-partition"

    def __init__(self, balance: str = "tokens") -> None:
        self.by_tokens = balance == "tokens"
        self._pools: dict[Tightness, tuple[Backend, ...]] = {}
        self._key: tuple[int, int, int] = (0, 0, 0)

    def _pool(self, request: RequestInfo, snapshot: Snapshot) -> tuple[Backend, ...]:
        key = snapshot.fleet
        if key != self._key:
            pools: dict[Tightness, list[Backend]] = {}
            tiers = snapshot.backends.tier_by_name
            for b in snapshot.eligible(None):
                pools.setdefault(tier_tightness(tiers.get(b.tier)), []).append(b)
            self._pools = {k: tuple(v) for k, v in pools.items()}
            self._key = key
        return self._pools.get(tier_tightness(request.tier), ())

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision:
        if not snapshot.healthy:
            return self.no_backend(snapshot)
        pool = self._pool(request, snapshot)
        if not pool:
            return Reject(503, f"no healthy backend in tier {request.tier.name!r}", retry_after_s=1.0)
        loads = snapshot.loads
        if self.by_tokens:
            ranked = sorted(pool, key=lambda b: loads[b.id].kv_tokens)
        else:
            ranked = sorted(pool, key=lambda b: loads[b.id].running)
        return Dispatch(tuple(b.id for b in ranked))


def make_static_partition(params: Mapping[str, Any], ctx: PolicyContext) -> StaticPartition:
    p = Params(params)
    balance = p.choice("balance", "tokens", ("tokens", "requests"))
    p.done()
    return StaticPartition(balance)
