"""Replicas across hosts share rows through Redis / Valkey (``state.sync.kind: redis``).

Layout (``P`` = ``state.sync.prefix``): each replica's row is the string key
``P:row:<holder>``, written with ``SET … PX ttl`` every tick (a replica that stops
publishing — killed, partitioned — vanishes after the TTL); the leader lease is
``P:leader``, taken with ``SET NX PX`` and renewed by its holder only (a compare-and-set
in a Lua script, so a replica never renews a lease another has taken since). Reading the
rows is one ``SCAN`` for the keys and one ``MGET`` (a pipeline of two round trips per
tick, whatever the number of replicas). Uses the maintained ``redis`` client's asyncio
API; every failure surfaces as :class:`~slorouter.proxy.syncloop.StoreError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from slorouter.proxy.syncloop import StoreError
from slorouter.state.sync import Row

log = logging.getLogger("slorouter.sync")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisStore:
    def __init__(self, url: str, *, prefix: str, ttl_s: float, timeout_s: float | None = None) -> None:
        self.prefix = prefix
        self.ttl_ms = max(1, round(ttl_s * 1000))
        # a tick must not hang on a dead store: give up well within the TTL
        t = timeout_s if timeout_s is not None else max(0.05, ttl_s / 2)
        self._r = aioredis.Redis.from_url(
            url, socket_timeout=t, socket_connect_timeout=t, retry_on_timeout=False, health_check_interval=0
        )
        self._renew = self._r.register_script(_RENEW)
        self._holder: str | None = None
        self.bad_rows = 0

    def _row_key(self, holder: str) -> str:
        return f"{self.prefix}:row:{holder}"

    async def exchange(self, row: Row) -> Mapping[str, Row]:
        self._holder = row.holder
        try:
            await self._r.set(self._row_key(row.holder), row.to_bytes(), px=self.ttl_ms)
            keys = [k async for k in self._r.scan_iter(match=f"{self.prefix}:row:*", count=1000)]
            raws = await self._r.mget(keys) if keys else []
        except (RedisError, OSError) as e:
            raise StoreError(f"{type(e).__name__}: {e}") from e
        out: dict[str, Row] = {}
        for raw in raws:
            if raw is None:  # expired between SCAN and MGET
                continue
            try:
                r = Row.from_bytes(raw if isinstance(raw, bytes) else raw.encode())
            except ValueError as e:
                self.bad_rows += 1
                log.debug("skipping a malformed row: %s", e)
                continue
            out[r.holder] = r
        return out

    async def lease(self, holder: str, ttl_s: float) -> bool:
        key = f"{self.prefix}:leader"
        ms = max(1, round(ttl_s * 1000))
        try:
            if await self._r.set(key, holder, nx=True, px=ms):
                return True
            return bool(await self._renew(keys=[key], args=[holder, ms]))
        except (RedisError, OSError) as e:
            raise StoreError(f"{type(e).__name__}: {e}") from e

    async def close(self) -> None:
        """Withdraw this replica's row (a clean stop hands its share back at once)."""
        try:
            if self._holder is not None:
                await self._r.delete(self._row_key(self._holder))
        except (RedisError, OSError) as e:
            log.info("could not withdraw this replica's row (%s); it expires with its TTL", e)
        finally:
            await self._r.aclose()
