"""Sending scaling decisions to webhooks, never in the way of routing.

:meth:`WebhookSender.submit` is synchronous and O(1): it appends the decision to a
bounded queue per URL (full: the oldest waiting decision is dropped and counted — a newer
decision carries the newer ``desired``) and returns. One background task per URL (started
in the app's ``cleanup_ctx``) sends them in order:

* ``POST`` the JSON body with ``Content-Type: application/json``, ``X-Slorouter-Signature:
  sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the secret>``,
  ``X-Slorouter-Decision-Id`` and ``Idempotency-Key`` (both the ``decision_id``);
* a 2xx answer is delivered; 408, 425, 429, 5xx, a refused connection or a timeout
  (``timeout_s``) are retried with the same body and id (so the receiver can drop
  duplicates) after ``backoff_s`` doubling, jittered, capped at ``backoff_max_s``, up to
  ``max_attempts``; any other 4xx is given up at once (the receiver refuses it);
* a decision submitted twice (same ``decision_id``) is sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
from collections import OrderedDict, deque
from typing import Any, Final

import aiohttp
import orjson

from slorouter.config.autoscale import WebhookConfig

log = logging.getLogger("slorouter.webhook")

SIGNATURE_HEADER: Final = "X-Slorouter-Signature"
DECISION_HEADER: Final = "X-Slorouter-Decision-Id"
_RETRY_STATUS: Final = frozenset({408, 425, 429})
_SEEN: Final = 4096  # decision ids remembered for de-duplication


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` (constant-time comparison)."""
    return header is not None and hmac.compare_digest(sign(secret, body).encode(), header.encode())


class WebhookSender:
    def __init__(self, cfg: WebhookConfig, secret: bytes, *, seed: int = 0) -> None:
        if not secret:
            raise ValueError("the webhook secret is empty")
        self.cfg = cfg
        self._secret = secret
        self._rng = random.Random(seed)
        self._queues: dict[str, deque[tuple[str, bytes]]] = {u: deque() for u in cfg.urls}
        self._ready: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        # decisions some URL has not had its answer for yet: id -> (body, those URLs)
        self._open: OrderedDict[str, tuple[dict[str, Any], set[str]]] = OrderedDict()
        self.stats: dict[str, int] = {"delivered": 0, "retried": 0, "failed": 0, "dropped": 0}
        self.in_flight = 0

    def submit(self, body: dict[str, Any]) -> bool:
        """Queue ``body`` (a decision) for every URL; False when its id was seen before."""
        did = str(body["decision_id"])
        if did in self._seen:
            return False
        self._seen[did] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        data = orjson.dumps(body)
        if self._queues:
            self._open[did] = (body, set(self._queues))
        for url, q in self._queues.items():
            if len(q) >= self.cfg.queue_size:
                old_id, _ = q.popleft()
                self._settled(old_id, url)
                self.stats["dropped"] += 1
                log.warning("webhook %s: queue full, decision %s dropped (a newer one follows)", url, old_id)
            q.append((did, data))
            ev = self._ready.get(url)
            if ev is not None:
                ev.set()
        return True

    def undelivered(self) -> list[dict[str, Any]]:
        """The decisions not yet delivered to (nor given up on by) every URL, oldest first."""
        return [body for body, _ in self._open.values()]

    def _settled(self, did: str, url: str) -> None:
        entry = self._open.get(did)
        if entry is not None:
            entry[1].discard(url)
            if not entry[1]:
                del self._open[did]

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values()) + self.in_flight

    def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        loop = asyncio.get_running_loop()
        for url in self._queues:
            self._ready[url] = asyncio.Event()
            if self._queues[url]:
                self._ready[url].set()
            self._tasks.append(loop.create_task(self._worker(url), name=f"webhook {url}"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        left = sum(len(q) for q in self._queues.values())
        if left:
            log.warning("webhooks: %d decision(s) not sent at shutdown", left)

    async def _worker(self, url: str) -> None:
        q = self._queues[url]
        ev = self._ready[url]
        while True:
            if not q:
                ev.clear()
                await ev.wait()
                continue
            did, data = q.popleft()
            self.in_flight += 1
            try:
                await self._deliver(url, did, data)
            finally:
                self.in_flight -= 1
                self._settled(did, url)

    def _pause(self, attempt: int) -> float:
        c = self.cfg
        base: float = min(c.backoff_max_s, c.backoff_s * 2.0 ** (attempt - 1))
        return min(c.backoff_max_s, base * (0.5 + self._rng.random()))

    async def _deliver(self, url: str, did: str, data: bytes) -> None:
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, data),
            DECISION_HEADER: did,
            "Idempotency-Key": did,
        }
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        why = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            if attempt > 1:
                self.stats["retried"] += 1
                await asyncio.sleep(self._pause(attempt - 1))
            try:
                async with self._session.post(url, data=data, headers=headers, timeout=timeout) as r:
                    await r.read()
                    if 200 <= r.status < 300:
                        self.stats["delivered"] += 1
                        return
                    why = f"HTTP {r.status}"
                    if r.status < 500 and r.status not in _RETRY_STATUS:
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                why = type(e).__name__
        self.stats["failed"] += 1
        log.error("webhook %s: decision %s not delivered (%s)", url, did, why)
