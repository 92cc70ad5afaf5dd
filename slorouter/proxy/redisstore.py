"""Replicas across hosts share rows through Redis / Valkey (``state.sync.kind: redis``).

Layout (``P`` = ``state.sync.prefix``, one per logical router):

- ``P:rows`` — a hash, replica name → its latest :class:`~slorouter.state.sync.Row`;
- ``P:alive`` — a sorted set, replica name → when its row expires (server time, ms);
- ``P:leader`` — the leader lease: the holder's name, with a ``PX`` expiry.

One tick is **one round trip** for the rows: a Lua script (atomic on the server) drops
the rows whose expiry has passed, writes this replica's row with a new expiry ``ttl``
ahead, and returns every live row. A replica that stops publishing (killed, partitioned)
vanishes ``ttl`` after its last write, at the next exchange of any live one; the two keys
themselves expire ``ttl`` after the newest row's expiry, so nothing is left behind when
every replica is gone. (Why not a key per row and ``SCAN``: a ``SCAN`` walks the whole
keyspace of a Redis shared with other data, in many round trips; the hash is read in one.)

The lease is a second round trip: taken when free (or renewed by its holder) with ``PX
ttl``, in a script, so a replica never renews a lease another has taken since. A clean
stop withdraws the row and gives the lease up at once.

Client settings that matter (the defaults of ``redis.asyncio`` would stall a tick on a
dead store): no retries (the next tick is the retry), connect and read timeouts of
``timeout_s`` (default half the TTL). Reconnecting is the client's: the next command after
the store comes back opens a fresh connection (scripts are loaded again if the server
lost them). Every failure surfaces as :class:`~slorouter.proxy.syncloop.StoreError`.
All keys are named in the scripts' ``KEYS``, so a Redis Cluster serves them when the
prefix holds a hash tag (``{slorouter}``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from slorouter.proxy.syncloop import StoreError
from slorouter.state.sync import Row

log = logging.getLogger("slorouter.sync")

# KEYS: rows (hash), alive (zset). ARGV: holder, row, ttl_ms. Returns every live row.
_EXCHANGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[1], unpack(dead))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local keep = math.max(1, tonumber(last[2]) - now)
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return redis.call('HVALS', KEYS[1])
"""

# KEYS: lease. ARGV: holder, ttl_ms. 1 when the holder has the lease (taken or renewed).
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: rows, alive, lease. ARGV: holder. Withdraw the row; give the lease up if held.
_WITHDRAW = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return 1
"""


class RedisStore:
    """A :class:`~slorouter.proxy.syncloop.LiveStore` on Redis / Valkey (see module docs)."""

    def __init__(self, url: str, *, prefix: str, ttl_s: float, timeout_s: float | None = None) -> None:
        self.prefix = prefix
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.timeout_s = timeout_s if timeout_s is not None else max(0.05, ttl_s / 2)
        self._r = aioredis.Redis.from_url(
            url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._exchange = self._r.register_script(_EXCHANGE)
        self._lease = self._r.register_script(_LEASE)
        self._withdraw = self._r.register_script(_WITHDRAW)
        self._keys = [f"{prefix}:rows", f"{prefix}:alive", f"{prefix}:leader"]
        self._holder: str | None = None
        self.bad_rows = 0

    async def exchange(self, row: Row) -> Mapping[str, Row]:
        self._holder = row.holder
        try:
            raws = await self._exchange(keys=self._keys[:2], args=[row.holder, row.to_bytes(), self.ttl_ms])
        except (RedisError, OSError) as e:
            raise StoreError(f"{type(e).__name__}: {e}") from e
        out: dict[str, Row] = {}
        for raw in raws:
            try:
                r = Row.from_bytes(raw if isinstance(raw, bytes) else str(raw).encode())
            except ValueError as e:
                self.bad_rows += 1
                log.debug("skipping a malformed row: %s", e)
                continue
            out[r.holder] = r
        return out

    async def lease(self, holder: str, ttl_s: float) -> bool:
        ms = max(1, round(ttl_s * 1000))
        try:
            return bool(await self._lease(keys=self._keys[2:], args=[holder, ms]))
        except (RedisError, OSError) as e:
            raise StoreError(f"{type(e).__name__}: {e}") from e

    async def close(self) -> None:
        """Withdraw this replica's row and give the lease up (a clean stop hands its share
        and the leader's duties over at once)."""
        try:
            if self._holder is not None:
                await self._withdraw(keys=self._keys, args=[self._holder])
        except (RedisError, OSError) as e:
            log.info("could not withdraw this replica's row (%s); it expires with its TTL", e)
        finally:
            await self._r.aclose()
