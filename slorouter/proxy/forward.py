"""Forwarding one request to its backend, with failover before the first byte.

Contract:

* the caller (HTTP handler) has registered the request (``tracker.on_arrival``) and
  will finalize it (``tracker.on_finish``) in its ``finally``; this module only moves
  it (``on_dispatch`` / ``on_retry``) and reports tokens and usage;
* a backend that fails before anything reached the client (connect error, no first
  body byte within the tier's ``first_byte_s``, a 5xx or 429 answer, a stream that
  ends before its first byte) is skipped for the next one of the decision's ranked
  list, with jittered exponential backoff (``backoff_s`` doubling, capped at
  ``backoff_max_s``), at most ``max_attempts`` backends in all. A retry is not started
  once the request's TTFT deadline (deadline classes: its deadline) has passed —
  except for best-effort tiers, which have none; the backoff never sleeps past it;
* after the first byte reached the client nothing is retried: a streaming client gets
  a well-formed error event (OpenAI: ``data: {"error": ...}`` then ``data: [DONE]``;
  TGI: ``data:{"error": ..., "error_type": ...}``) and a clean end of the stream;
* no wait is unbounded: connect (``connect_s``), headers and first byte
  (``first_byte_s``), every later silence of the engine (``idle_s``: a stream's
  :class:`~slorouter.proxy.watchdog.IdleWatchdog`, a whole body's per-read timer), and a
  client that stops reading while its buffer is full (``idle_s``: the router then drops it);
* every attempt is reported to ``report(backend_id, signal, detail)`` (passive health,
  see :mod:`slorouter.proxy.health`);
* the upstream response is released to the pool only after a complete, clean
  exchange; on any failure or client disconnect it is closed, so the engine sees the
  connection drop and frees the request's slot.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import aiohttp
import orjson
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

from slorouter.proxy.engines import Prepared
from slorouter.proxy.errors import error_response, sse_error_event
from slorouter.proxy.health import Signal
from slorouter.proxy.sse import Flavor, SseObserver, usage_of_body
from slorouter.proxy.upstream import (
    Timeouts,
    UpstreamSettings,
    arm_idle_timeout,
    downstream_headers,
    upstream_headers,
)
from slorouter.proxy.watchdog import IdleWatchdog
from slorouter.state.backends import Backend, BackendSet
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, SloClass, Status

BackendReport = Callable[[str, Signal, str], None]  # (backend id, what happened, detail)
_UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
# client write buffer above which the stream waits for the client (as aiohttp's writer does
# after 64 KiB, its LIMIT), and drops it if it reads nothing for idle_s
_DRAIN_BYTES = 64 * 1024


@dataclass(slots=True)
class Result:
    response: web.StreamResponse
    status: Status
    backend: str | None
    attempts: int


class _ClientGone(Exception):
    pass


def _signal_of(e: BaseException) -> Signal:
    if isinstance(e, TimeoutError | aiohttp.ServerTimeoutError):
        return Signal.TIMEOUT
    return Signal.CONNECT


def retry_deadline(info: RequestInfo) -> float:
    """Latest time a retry may start: the TTFT deadline, else the whole-response
    deadline, else never (best effort)."""
    slo = info.tier.slo
    if slo.slo_class is SloClass.BEST_EFFORT:
        return math.inf
    if slo.ttft_s is not None:
        return info.arrival + slo.ttft_s
    return info.deadline_at if info.deadline_at is not None else math.inf


def tgi_error_event(message: str) -> bytes:
    return b"data:" + orjson.dumps({"error": message, "error_type": "upstream_error"}) + b"\n\n"


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        tracker: Tracker,
        settings: UpstreamSettings,
        report: BackendReport | None = None,
        seed: int = 0,
    ) -> None:
        self.session = session
        self.tracker = tracker
        self.settings = settings  # replaced as a whole on a config reload
        self._report = report or (lambda _b, _s, _d: None)
        self._rng = random.Random(seed)
        self.retries = 0  # attempts beyond the first, over the process lifetime
        self.resends = 0  # re-sends on a fresh connection after a pooled one was closed
        self.budget_stops = 0  # failovers not started because the TTFT budget was spent
        self.slow_clients = 0  # clients dropped for not reading their stream

    def _backends(self) -> BackendSet:
        return self.tracker.backends

    def _backoff(self, attempts: int) -> float:
        s = self.settings
        base: float = min(s.backoff_max_s, s.backoff_s * 2.0 ** (attempts - 1))
        return base * (0.5 + self._rng.random())

    async def forward(
        self,
        request: web.Request,
        info: RequestInfo,
        ranked: tuple[str, ...],
        path: str,
        prepare: Callable[[Backend], Prepared],
        on_attempt: Callable[[RequestInfo, str], None] | None = None,
    ) -> Result:
        """``on_attempt(info, backend_id)`` is told of every backend actually tried
        (the policy's ``on_dispatch`` hook), the first one and each failover."""
        rid = info.rid
        tracker = self.tracker
        settings = self.settings
        to = settings.timeouts(info.tier.name)
        client_headers = list(request.headers.items())
        last_failure: aiohttp.ClientResponse | None = None
        last_reason = "no backend could be reached"
        attempts = 0
        deadline = retry_deadline(info)
        clock = tracker.clock
        candidates = [b for b in (self._backends().get(x) for x in ranked) if b is not None]
        for backend in candidates[: settings.max_attempts]:
            if attempts == 0:
                tracker.on_dispatch(rid, backend.id)
            else:
                now = clock.now()
                if now >= deadline:
                    self.budget_stops += 1
                    last_reason += "; not retried: the request's TTFT deadline has passed"
                    break
                self.retries += 1
                tracker.on_retry(rid, backend.id)
                await asyncio.sleep(min(self._backoff(attempts), (deadline - now) / 2))
            if on_attempt is not None:
                on_attempt(info, backend.id)
            attempts += 1
            if last_failure is not None:
                last_failure.close()
                last_failure = None
            prep = prepare(backend)
            headers = upstream_headers(client_headers, backend.api_key)
            headers["Content-Type"] = "application/json"
            up: aiohttp.ClientResponse | None = None
            first = b""
            try:
                async with asyncio.timeout(to.first_byte_s):
                    up = await self._post(backend.url + path, prep.body, headers, to.connect_s)
                    if up.status >= 500 or up.status == 429:
                        over = up.status == 429
                        self._report(
                            backend.id, Signal.OVERLOADED if over else Signal.HTTP_5XX, f"http {up.status}"
                        )
                        last_reason = f"backend {backend.id} answered {up.status}"
                        last_failure = up
                        continue
                    if prep.stream and up.status == 200:
                        first = await up.content.readany()
                        if not first:
                            raise aiohttp.ServerDisconnectedError("closed before the first byte")
            except _UPSTREAM_ERRORS as e:
                if up is not None:
                    up.close()
                self._report(backend.id, _signal_of(e), type(e).__name__)
                what = "no first byte in time" if isinstance(e, TimeoutError) else f"{type(e).__name__} {e}"
                last_reason = f"backend {backend.id}: {what}".strip()
                continue
            except BaseException:
                if up is not None:
                    up.close()
                raise
            self._report(backend.id, Signal.OK, "")
            if prep.stream and up.status == 200:
                return await self._stream(request, info, backend, up, prep, first, attempts, to)
            arm_idle_timeout(up, to.idle_s)
            return await self._whole(info, backend, up, attempts)
        return await self._failed(last_failure, last_reason, attempts)

    async def _post(
        self, url: str, body: bytes, headers: CIMultiDict[str], connect_s: float
    ) -> aiohttp.ClientResponse:
        """POST, sent a second time on a fresh connection if the engine closed the pooled
        one before answering (its idle timeout raced our send: the engine never read the
        request). That is not a backend failure, so it is neither reported nor counted."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s)
        try:
            return await self.session.post(url, data=body, headers=headers, timeout=timeout)
        except aiohttp.ServerDisconnectedError:
            self.resends += 1
            return await self.session.post(url, data=body, headers=headers, timeout=timeout)

    async def _failed(self, last: aiohttp.ClientResponse | None, reason: str, attempts: int) -> Result:
        if last is not None:  # every backend failed; the last one's answer goes back as it is
            try:
                body = await _read_some(last, 1 << 20, 2.0)  # an error body: small, bounded
                resp = web.Response(
                    status=last.status, body=body, headers=downstream_headers(last.headers.items())
                )
            except _UPSTREAM_ERRORS:
                resp = error_response(502, reason, "upstream_error")
            finally:
                last.close()
            return Result(resp, Status.ERROR, None, attempts)
        if attempts == 0:
            return Result(
                error_response(503, "no healthy backend serves this request", "no_backend"),
                Status.REJECTED,
                None,
                0,
            )
        status = 504 if "no first byte in time" in reason else 502
        return Result(error_response(status, reason, "upstream_error"), Status.ERROR, None, attempts)

    async def _whole(
        self, info: RequestInfo, backend: Backend, up: aiohttp.ClientResponse, attempts: int
    ) -> Result:
        limit = self.settings.max_response_bytes
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = await up.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    up.close()
                    return Result(
                        error_response(502, "engine response too large", "upstream_error"),
                        Status.ERROR,
                        backend.id,
                        attempts,
                    )
                parts.append(chunk)
        except _UPSTREAM_ERRORS as e:
            up.close()
            self._report(backend.id, Signal.BROKEN, type(e).__name__)
            return Result(
                error_response(502, f"backend {backend.id}: {type(e).__name__}", "upstream_error"),
                Status.ERROR,
                backend.id,
                attempts,
            )
        except BaseException:
            up.close()
            raise
        body = b"".join(parts)
        up.release()
        status = Status.OK if up.status < 400 else Status.ERROR
        if up.status == 200:
            p, c = usage_of_body(body)
            if c:
                self.tracker.on_tokens(info.rid, c)
            self.tracker.on_usage(info.rid, p, c)
        resp = web.Response(status=up.status, body=body, headers=downstream_headers(up.headers.items()))
        return Result(resp, status, backend.id, attempts)

    async def _stream(
        self,
        request: web.Request,
        info: RequestInfo,
        backend: Backend,
        up: aiohttp.ClientResponse,
        prep: Prepared,
        first: bytes,
        attempts: int,
        to: Timeouts,
    ) -> Result:
        rid, tracker = info.rid, self.tracker
        on_tokens, on_usage = partial(tracker.on_tokens, rid), partial(tracker.on_usage, rid)
        obs = SseObserver(prep.flavor, on_tokens, on_usage, prep.strip_usage)
        resp = web.StreamResponse(status=up.status, headers=downstream_headers(up.headers.items()))
        if request.version >= HttpVersion11:
            resp.enable_chunked_encoding()
        status = Status.ERROR
        clean = False
        transport = request.transport
        loop = asyncio.get_running_loop()
        content = up.content
        watchdog = IdleWatchdog(loop, content, to.idle_s)

        async def drained() -> None:
            """The client's buffer is over _DRAIN_BYTES: wait (up to idle_s) until it
            reads, else drop it."""
            watchdog.busy = True
            try:
                async with asyncio.timeout(to.idle_s):
                    await request.writer.drain()
            except TimeoutError as e:  # the client stopped reading: drop it
                self.slow_clients += 1
                if transport is not None:
                    transport.abort()
                raise _ClientGone from e
            except ConnectionError as e:
                raise _ClientGone from e
            finally:
                watchdog.busy = False

        async def send(data: bytes) -> None:
            """Through aiohttp's writer: the first write (it carries the buffered head),
            and every write of an HTTP/1.0 response (unframed)."""
            watchdog.busy = True
            try:
                await resp.write(data)
            except ConnectionError as e:
                raise _ClientGone from e
            finally:
                watchdog.busy = False
            if transport is not None and transport.get_write_buffer_size() > _DRAIN_BYTES:
                await drained()

        try:
            try:
                await resp.prepare(request)
            except ConnectionError as e:
                raise _ClientGone from e
            # the head goes out with the first bytes (aiohttp holds it until the first write)
            await send(obs.feed(first))
            # later writes: one HTTP/1.1 chunk straight to the client's transport (what
            # aiohttp's writer would send, without two coroutines and a join per token)
            direct = resp.chunked and transport is not None
            feed = obs.feed
            while True:
                try:
                    data = await content.readany()
                except _UPSTREAM_ERRORS as e:
                    idle = isinstance(e, TimeoutError | aiohttp.ServerTimeoutError)
                    self._report(backend.id, Signal.BROKEN, f"mid-stream {type(e).__name__}")
                    why = f"no data for {to.idle_s:g} s" if idle else type(e).__name__
                    await self._write_error(resp, prep.flavor, f"the engine stream broke: {why}")
                    break
                watchdog.last = loop.time()
                if not data:
                    rest = obs.flush()
                    if rest:
                        await send(rest)
                    if prep.flavor is Flavor.OPENAI and not obs.done:
                        self._report(backend.id, Signal.BROKEN, "closed early")
                        await self._write_error(resp, prep.flavor, "the engine closed the stream early")
                    else:
                        status = Status.OK
                        clean = True
                        try:
                            await resp.write_eof()
                        except ConnectionError as e:
                            raise _ClientGone from e
                    break
                out = feed(data)
                if not out:
                    continue
                if direct:
                    assert transport is not None
                    if transport.is_closing():
                        raise _ClientGone
                    transport.write(b"%x\r\n%b\r\n" % (len(out), out))
                    if transport.get_write_buffer_size() > _DRAIN_BYTES:
                        await drained()
                else:
                    await send(out)
        except _ClientGone:
            status = Status.CANCELLED
        finally:
            watchdog.cancel()
            if clean:
                up.release()
            else:
                up.close()
        return Result(resp, status, backend.id, attempts)

    @staticmethod
    async def _write_error(resp: web.StreamResponse, flavor: Flavor, message: str) -> None:
        event = tgi_error_event(message) if flavor is Flavor.TGI else sse_error_event(message)
        try:
            async with asyncio.timeout(1.0):
                await resp.write(event)
                await resp.write_eof()
        except (ConnectionError, TimeoutError):
            pass


async def _read_some(up: aiohttp.ClientResponse, limit: int, timeout_s: float) -> bytes:
    """At most ``limit`` bytes of a body, within ``timeout_s``."""
    parts: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout_s):
        while size < limit:
            chunk = await up.content.readany()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    return b"".join(parts)[:limit]
