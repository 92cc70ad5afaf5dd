"""Which store, if any, a router process shares its load picture through."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from slorouter.config.model import RouterConfig, SyncKind
from slorouter.proxy.syncloop import LiveStore


@dataclass(frozen=True, slots=True)
class SharedState:
    store: LiveStore
    holder: str  # this process's name in the store (unique while it lives)
    tick_s: float
    ttl_s: float
    quota: bool = True
    event_s: float = 0.0  # exchange this soon after the last when the own row changed (0: ticks only)
    share_learning: bool = True  # publish what the latency model learns from; learn from the others'


def holder_name() -> str:
    """host-pid-random: unique across hosts and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def shared_state_of(cfg: RouterConfig) -> SharedState | None:
    """The replicas' store named by ``state.sync`` (None: this process alone)."""
    sc = cfg.state.sync
    if sc.kind is SyncKind.NONE:
        return None
    if sc.kind is SyncKind.REDIS:
        from slorouter.proxy.redisstore import RedisStore

        assert sc.url is not None  # the config check requires it
        store = RedisStore(sc.url, prefix=sc.prefix, ttl_s=sc.ttl_ms / 1000.0)
        return SharedState(
            store,
            holder_name(),
            sc.tick_ms / 1000.0,
            sc.ttl_ms / 1000.0,
            sc.quota,
            sc.event_ms / 1000.0,
            sc.share_learning,
        )
    raise ValueError(f"unknown state.sync.kind {sc.kind!r}")
