"""The webhook sender against real HTTP receivers on 127.0.0.1: signed bodies, retries
with the same decision id, no retry of a refusal, a bounded queue that drops the oldest,
duplicates sent once, and ``submit`` never waiting for the network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from slorouter.actuation.webhook import DECISION_HEADER, SIGNATURE_HEADER, WebhookSender, sign, verify
from slorouter.config.autoscale import WebhookConfig
from tests.faults.test_faults import poll
from tests.servekit import serve_app

SECRET = b"webhook-test-secret"


@dataclass
class Receiver:
    url: str
    answers: list[int] = field(default_factory=list)  # statuses to answer, in order (then 200)
    delay_s: float = 0.0
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@asynccontextmanager
async def receiver(answers: list[int] | None = None, delay_s: float = 0.0) -> AsyncIterator[Receiver]:
    rec = Receiver("", list(answers or []), delay_s)

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        rec.got.append((dict(request.headers), body))
        if rec.delay_s:
            await asyncio.sleep(rec.delay_s)
        status = rec.answers.pop(0) if rec.answers else 200
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve_app(app) as base:
        rec.url = base + "/hook"
        yield rec


def body(i: int, tier: str = "t20") -> dict[str, Any]:
    return {
        "tier": tier,
        "current": 1,
        "desired": 2,
        "add": 1,
        "remove": [],
        "reason": "test",
        "decision_id": f"x-{i}",
        "at": 1.0,
    }


@asynccontextmanager
async def sender(urls: list[str], **kw: Any) -> AsyncIterator[WebhookSender]:
    cfg = WebhookConfig(urls=tuple(urls), backoff_s=0.01, backoff_max_s=0.05, timeout_s=1.0, **kw)
    s = WebhookSender(cfg, SECRET)
    async with aiohttp.ClientSession() as session:
        s.start(session)
        try:
            yield s
        finally:
            await s.stop()


def test_signature_round_trip() -> None:
    data = orjson.dumps(body(1))
    sig = sign(SECRET, data)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify(SECRET, data, sig)
    assert not verify(SECRET, data + b" ", sig)
    assert not verify(b"another secret", data, sig)
    assert not verify(SECRET, data, None)


async def test_a_decision_is_signed_and_retried_with_the_same_id_until_accepted() -> None:
    async with receiver([503, 500, 429]) as rec, sender([rec.url]) as s:
        assert s.submit(body(1))
        await poll(lambda: s.stats["delivered"] == 1, 5.0)
        assert len(rec.got) == 4 and s.stats["retried"] == 3 and s.stats["failed"] == 0
        raw = {b for _, b in rec.got}
        assert raw == {orjson.dumps(body(1))}  # the same bytes every time
        for headers, data in rec.got:
            assert verify(SECRET, data, headers[SIGNATURE_HEADER])
            assert headers[DECISION_HEADER] == headers["Idempotency-Key"] == "x-1"
            assert headers["Content-Type"] == "application/json"
        assert orjson.loads(rec.got[0][1]) == body(1)


async def test_a_refusal_is_not_retried_and_a_duplicate_is_not_sent_again() -> None:
    async with receiver([400]) as rec, sender([rec.url]) as s:
        assert s.submit(body(1))
        assert not s.submit(body(1))  # same decision id
        assert s.submit(body(2))
        await poll(lambda: s.stats["delivered"] == 1 and s.stats["failed"] == 1, 5.0)
        assert [orjson.loads(b)["decision_id"] for _, b in rec.got] == ["x-1", "x-2"]
        assert s.stats["retried"] == 0


async def test_a_receiver_that_is_down_gives_up_after_max_attempts_without_blocking_submit() -> None:
    async with receiver() as rec:
        url = rec.url
    # the port is closed now: connections are refused
    async with sender([url], max_attempts=3, queue_size=2) as s:
        t0 = time.perf_counter()
        for i in range(10):
            s.submit(body(i))
        assert time.perf_counter() - t0 < 0.05  # submit returns at once
        assert len(s.undelivered()) <= 3  # the dropped ones are not waiting any more
        await poll(lambda: s.waiting() == 0, 5.0)
        assert s.undelivered() == []
        # ten submitted in one go, two kept (the newest), each tried three times
        assert s.stats["dropped"] == 8 and s.stats["failed"] == 2 and s.stats["retried"] == 4


async def test_a_slow_receiver_holds_only_its_own_queue() -> None:
    async with receiver(delay_s=0.5) as slow, receiver() as fast, sender([slow.url, fast.url]) as s:
        for i in range(3):
            s.submit(body(i))
        await poll(lambda: len(fast.got) == 3, 1.0)  # before the slow one answered twice
        assert len(slow.got) < 3
        await poll(lambda: s.stats["delivered"] == 6, 5.0)


async def test_undelivered_lists_a_decision_until_every_url_answered_or_gave_up() -> None:
    """What a next leader would send again (docs/autoscaling.md): a decision stays listed
    while some URL has not had it; dropped or given up on, it is settled too."""
    async with receiver() as rec:
        down = rec.url
    async with receiver(delay_s=0.3) as slow, sender([slow.url, down], max_attempts=2) as s:
        s.submit(body(1))
        assert [b["decision_id"] for b in s.undelivered()] == ["x-1"]
        await poll(lambda: s.stats["failed"] == 1, 5.0)  # the down URL gave up ...
        assert [b["decision_id"] for b in s.undelivered()] == ["x-1"]  # ... the slow one not yet
        await poll(lambda: s.stats["delivered"] == 1, 5.0)
        assert s.undelivered() == []
