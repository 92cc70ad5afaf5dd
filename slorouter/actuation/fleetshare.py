"""The run-time backend list of one logical router made of several processes.

A backend registered or removed through the admin API of any process (or released or
moved by the leader's scaler) must reach every process. Each process keeps a **versioned
list** of the run-time changes: per backend id its latest word — ``active`` (with its
description: URL, engine, tier, models, the *name* of its API key's environment
variable, never the key), ``removing`` (draining) or ``removed`` — the tier bin the
scaler moved it to, who asked, and a version ``(Unix time, holder)``. Lists merge per
backend, the newest version wins (concurrent changes to different backends both stay).

The list travels with the row (``Row.fleet``): always its digest, and the whole list
while some other live process's digest differs (a change not everywhere yet, a process
that just started) — in steady state a few bytes per exchange. A process that learns
newer entries applies them through :meth:`FleetManager.adopt`: the membership changes,
then **one** swap of the backend set (never mutated under a decision).

Removal drains everywhere: every process stops placing on a ``removing`` backend as soon
as it adopts the entry, and any process takes it out of the set once (a) no process has
a request on it (the shared view's count: every row's) and (b) every other live process
publishes the same digest — it has adopted the removal, so nothing it placed there is
unseen. The ``removed`` entry then takes it out everywhere.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from slorouter.actuation.fleet import FleetManager
from slorouter.state.backends import Backend
from slorouter.state.rows import Row
from slorouter.values import Engine

log = logging.getLogger("slorouter.fleet")

KEEP_REMOVED = 512  # tombstones kept (a removed backend is not brought back by a stale list)


class FleetShare:
    def __init__(
        self,
        fleet: FleetManager,
        holder: str,
        wall: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.fleet = fleet
        self.holder = holder
        self.wall = wall
        self.env = env if env is not None else os.environ
        self.entries: dict[str, dict[str, Any]] = {}
        self.digest = _digest(self.entries)
        self.behind = False  # some other live process publishes another digest
        self.adopted = 0  # entries taken from other processes
        fleet.on_change = self.record
        fleet.can_finish = self.can_finish

    # -- local changes ------------------------------------------------------------------

    def record(self, ids: Iterable[str]) -> None:
        m = self.fleet.membership
        wall = self.wall()
        for bid in ids:
            old = self.entries.get(bid)
            at = wall if old is None else max(wall, float(old["v"][0]) + 1e-6)
            b = m.get(bid)
            if bid in m.removing:
                state = "removing"
            elif b is not None:
                state = "active"
            else:
                state = "removed"
            by = m.removing.get(bid) or next(
                (r.by for r in reversed(m.removed) if r.backend.id == bid), "admin"
            )
            self.entries[bid] = {
                "v": [at, self.holder],
                "s": state,
                "b": _describe(b, self.fleet.key_envs.get(bid)) if b is not None else None,
                "t": m.tier_of.get(bid),
                "by": by,
            }
        self._prune()
        self.digest = _digest(self.entries)
        self.behind = True  # publish the list until the others have it

    # -- the sync loop's riders -----------------------------------------------------------

    def extras(self) -> Mapping[str, Any]:
        doc: dict[str, Any] = {"d": self.digest}
        if self.behind and self.entries:
            doc["e"] = self.entries
        return {"fleet": doc}

    def observe(self, rows: Mapping[str, Row], leader: bool) -> None:
        newer: dict[str, dict[str, Any]] = {}
        others = [r for h, r in rows.items() if h != self.holder]
        for r in others:
            doc = r.fleet
            entries = doc.get("e") if isinstance(doc, dict) else None
            if not isinstance(entries, dict):
                continue
            for bid, e in entries.items():
                if _valid(e) and _newer(e, newer.get(bid) or self.entries.get(bid)):
                    newer[str(bid)] = e
        if newer:
            self._apply(newer)
        self.behind = any(not isinstance(r.fleet, dict) or r.fleet.get("d") != self.digest for r in others)
        if self.fleet.membership.removing:
            self.fleet.check_drained()

    def can_finish(self, backend_id: str) -> bool:
        """Every other live process has this list (so it adopted the removal)."""
        return not self.behind

    # -- internals ------------------------------------------------------------------------

    def _apply(self, newer: Mapping[str, dict[str, Any]]) -> None:
        tiers = {t.name for t in self.fleet.membership.tiers}
        changes: dict[str, tuple[str, Backend | None, str | None, str]] = {}
        for bid, e in newer.items():
            self.entries[bid] = e
            b = _backend(bid, e.get("b"), self.env)
            if b is not None and b.tier not in tiers:
                log.warning("backend %s from another router process: unknown tier %r, not used", bid, b.tier)
                continue
            if b is not None and isinstance(e["b"].get("key_env"), str):
                self.fleet.key_envs[bid] = e["b"]["key_env"]
            t = e.get("t")
            changes[bid] = (str(e["s"]), b, t if isinstance(t, str) else None, str(e.get("by", "admin")))
        self._prune()
        self.digest = _digest(self.entries)
        self.adopted += len(changes)
        if changes:
            self.fleet.adopt(changes)

    def _prune(self) -> None:
        gone = [(e["v"], bid) for bid, e in self.entries.items() if e["s"] == "removed"]
        if len(gone) > KEEP_REMOVED:
            for _v, bid in sorted(gone)[: len(gone) - KEEP_REMOVED]:
                del self.entries[bid]


def _describe(b: Backend, key_env: str | None) -> dict[str, Any]:
    return {
        "url": b.url,
        "engine": b.engine.value,
        "tier": b.tier,
        "models": list(b.models),
        "key_env": key_env,
    }


def _backend(bid: str, d: Any, env: Mapping[str, str]) -> Backend | None:
    if not isinstance(d, dict):
        return None
    try:
        key_env = d.get("key_env")
        key = env.get(key_env) if isinstance(key_env, str) else None
        if isinstance(key_env, str) and not key:
            log.warning(
                "backend %s: environment variable %s is not set here; sent without a key", bid, key_env
            )
        return Backend(
            id=bid,
            url=str(d["url"]),
            engine=Engine(d["engine"]),
            tier=str(d["tier"]),
            models=tuple(str(x) for x in d.get("models") or ()),
            api_key=key or None,
        )
    except (KeyError, ValueError, TypeError):
        return None


def _valid(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("v"), list)
        and len(e["v"]) == 2
        and isinstance(e["v"][0], int | float)
        and e.get("s") in ("active", "removing", "removed")
    )


def _newer(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    if b is None:
        return True
    return (float(a["v"][0]), str(a["v"][1])) > (float(b["v"][0]), str(b["v"][1]))


def _digest(entries: Mapping[str, dict[str, Any]]) -> str:
    if not entries:
        return ""
    key = orjson.dumps(sorted((bid, e["v"]) for bid, e in entries.items()))
    return f"{len(entries)}-{zlib.crc32(key):08x}"
