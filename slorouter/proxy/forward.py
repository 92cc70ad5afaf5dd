"""Forwarding one request to its backend, with failover before the first byte.

Contract:
* the caller (HTTP handler) has registered the request (``tracker.on_arrival``) and
  will finalize it (``tracker.on_finish``) in its ``finally``; this module only moves
  it (``on_dispatch`` / ``on_retry``) and reports tokens and usage;
* a backend that fails before anything reached the client (connect error, timeout
  before the first body byte, 5xx/429 answer, empty body) is skipped for the next one
  of the decision's ranked list, with jittered exponential backoff, at most
  ``max_attempts`` backends; after the first byte reached the client nothing is
  retried: a streaming client gets an SSE error event and a clean end;
* the upstream response is released to the pool only after a complete, clean
  exchange; on any failure or client disconnect it is closed, so the engine sees the
  connection drop and frees the request's slot.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from slorouter.proxy.engines import Prepared
from slorouter.proxy.errors import error_response, sse_error_event
from slorouter.proxy.sse import Flavor, SseObserver, usage_of_body
from slorouter.proxy.upstream import UpstreamSettings, downstream_headers, upstream_headers
from slorouter.state.backends import Backend, BackendSet
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Status

BackendReport = Callable[[str, bool, str], None]  # (backend id, ok, what happened)
_UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


@dataclass(slots=True)
class Result:
    response: web.StreamResponse
    status: Status
    backend: str | None
    attempts: int


class _ClientGone(Exception):
    pass


class Forwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        tracker: Tracker,
        settings: UpstreamSettings,
        report: BackendReport | None = None,
        seed: int = 0,
        api_keys: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.tracker = tracker
        self.settings = settings
        self._report = report or (lambda _b, _ok, _w: None)
        self._rng = random.Random(seed)
        self._api_keys = api_keys or {}
        self.retries = 0  # attempts beyond the first, over the process lifetime

    def api_key(self, backend_id: str) -> str | None:
        return self._api_keys.get(backend_id)

    def _backends(self) -> BackendSet:
        return self.tracker.backends

    async def forward(
        self,
        request: web.Request,
        info: RequestInfo,
        ranked: tuple[str, ...],
        path: str,
        prepare: Callable[[Backend], Prepared],
    ) -> Result:
        rid = info.rid
        tracker = self.tracker
        settings = self.settings
        to = settings.timeouts(info.tier.name)
        client_headers = list(request.headers.items())
        last_failure: aiohttp.ClientResponse | None = None
        last_reason = "no backend could be reached"
        attempts = 0
        candidates = [b for b in (self._backends().get(x) for x in ranked) if b is not None]
        for backend in candidates[: settings.max_attempts]:
            if attempts == 0:
                tracker.on_dispatch(rid, backend.id)
            else:
                self.retries += 1
                tracker.on_retry(rid, backend.id)
                delay = settings.backoff_s * (2 ** (attempts - 1)) * (0.5 + self._rng.random())
                await asyncio.sleep(delay)
            attempts += 1
            if last_failure is not None:
                last_failure.close()
                last_failure = None
            prep = prepare(backend)
            headers = upstream_headers(client_headers, self._api_keys.get(backend.id))
            headers["Content-Type"] = "application/json"
            up: aiohttp.ClientResponse | None = None
            first = b""
            try:
                async with asyncio.timeout(to.first_byte_s):
                    up = await self.session.post(
                        backend.url + path,
                        data=prep.body,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(
                            total=None, sock_connect=to.connect_s, sock_read=to.idle_s
                        ),
                    )
                    if up.status >= 500 or up.status == 429:
                        self._report(backend.id, False, f"http {up.status}")
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
                self._report(backend.id, False, type(e).__name__)
                last_reason = f"backend {backend.id}: {type(e).__name__} {e}".strip()
                continue
            except BaseException:
                if up is not None:
                    up.close()
                raise
            self._report(backend.id, True, "ok")
            if prep.stream and up.status == 200:
                return await self._stream(request, info, backend, up, prep, first, attempts)
            return await self._whole(info, backend, up, attempts)
        if last_failure is not None:  # every backend failed; the last one's answer goes back as it is
            try:
                body = await last_failure.read()
                resp = web.Response(
                    status=last_failure.status,
                    body=body,
                    headers=downstream_headers(last_failure.headers.items()),
                )
            except _UPSTREAM_ERRORS:
                resp = error_response(502, last_reason, "upstream_error")
            finally:
                last_failure.close()
            return Result(resp, Status.ERROR, None, attempts)
        if attempts == 0:
            return Result(
                error_response(503, "no healthy backend serves this request", "no_backend"),
                Status.REJECTED,
                None,
                0,
            )
        return Result(error_response(502, last_reason, "upstream_error"), Status.ERROR, None, attempts)

    async def _whole(
        self, info: RequestInfo, backend: Backend, up: aiohttp.ClientResponse, attempts: int
    ) -> Result:
        try:
            body = await up.content.read(self.settings.max_response_bytes + 1)
            if len(body) > self.settings.max_response_bytes:
                up.close()
                return Result(
                    error_response(502, "engine response too large", "upstream_error"),
                    Status.ERROR,
                    backend.id,
                    attempts,
                )
        except _UPSTREAM_ERRORS as e:
            up.close()
            self._report(backend.id, False, type(e).__name__)
            return Result(
                error_response(502, f"backend {backend.id}: {type(e).__name__}", "upstream_error"),
                Status.ERROR,
                backend.id,
                attempts,
            )
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
    ) -> Result:
        rid = info.rid
        tracker = self.tracker

        def on_tokens(n: int) -> None:
            tracker.on_tokens(rid, n)

        def on_usage(p: int | None, c: int | None) -> None:
            tracker.on_usage(rid, p, c)

        obs = SseObserver(prep.flavor, on_tokens, on_usage, prep.strip_usage)
        resp = web.StreamResponse(status=up.status, headers=downstream_headers(up.headers.items()))
        status = Status.ERROR
        clean = False
        try:
            try:
                await resp.prepare(request)
                out = obs.feed(first)
                if out:
                    await resp.write(out)
            except ConnectionError as e:
                raise _ClientGone from e
            while True:
                try:
                    data = await up.content.readany()
                except _UPSTREAM_ERRORS as e:
                    self._report(backend.id, False, f"mid-stream {type(e).__name__}")
                    await self._write_error(resp, f"the engine stream broke: {type(e).__name__}")
                    break
                if not data:
                    rest = obs.flush()
                    try:
                        if rest:
                            await resp.write(rest)
                        if prep.flavor is Flavor.OPENAI and not obs.done:
                            await self._write_error(resp, "the engine closed the stream early")
                        else:
                            status = Status.OK
                            clean = True
                        await resp.write_eof()
                    except ConnectionError as e:
                        raise _ClientGone from e
                    break
                out = obs.feed(data)
                if out:
                    try:
                        await resp.write(out)
                    except ConnectionError as e:
                        raise _ClientGone from e
        except _ClientGone:
            status = Status.CANCELLED
        finally:
            if clean:
                up.release()
            else:
                up.close()
        return Result(resp, status, backend.id, attempts)

    @staticmethod
    async def _write_error(resp: web.StreamResponse, message: str) -> None:
        try:
            await resp.write(sse_error_event(message))
            await resp.write_eof()
        except ConnectionError:
            pass
