"""The hot path: send one request, time every streamed chunk, read ``usage``.

One ``aiohttp.ClientSession`` with an unlimited connector (an open-loop generator
must never queue requests behind its own connection pool). Per-chunk work is a byte
scan: a chunk is timed once per socket read, SSE events are split on blank lines, and
only the ``usage`` chunk (and error events) are parsed, with orjson.

What counts (the same as ``vllm bench serve``): every event whose JSON has a
non-empty ``choices`` list (``"choices":[{``) is a chunk; ``"choices":[]`` (the final
usage chunk) and ``[DONE]`` are not. A leading role-only chat chunk is marked (see
records.py). Servers that put one space after JSON colons are handled too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from loadgen.prompts import PromptMaker
from loadgen.records import CallRecord
from loadgen.tiers import TierSpec
from loadgen.workload import Workload

_USAGE = (b'"usage":{', b'"usage": {')
_ROLE_ONLY = (b'"content":""', b'"content":null', b'"content": ""', b'"content": null')


def make_session(limit: int = 0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        skip_auto_headers=("User-Agent",),
    )


async def first_model(session: aiohttp.ClientSession, target: str, headers: dict[str, str]) -> str:
    """The first model id served at ``target`` (GET /v1/models)."""
    url = target.rstrip("/") + "/v1/models"
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url} answered HTTP {resp.status}: {body[:200]!r}")
    data = orjson.loads(body)
    models = data.get("data") if isinstance(data, dict) else None
    if not models:
        raise RuntimeError(f"GET {url} lists no models")
    return str(models[0]["id"])


class Client:
    """Builds request bodies and headers for a workload and runs single calls."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: str,
        workload: Workload,
        model: str,
        t0: float,
        api_key: str | None = None,
        run_id: str = "lg",
    ) -> None:
        self.session = session
        self.url = target.rstrip("/") + workload.endpoint
        self.w = workload
        self.model = model
        self.t0 = t0
        self.run_id = run_id
        self.prompts = PromptMaker(workload.seed * 7919 + 4)
        self.timeout = aiohttp.ClientTimeout(total=workload.request_timeout_s)
        self._headers: dict[str, dict[str, str]] = {}
        for name in workload.tiers:
            h = {"Content-Type": "application/json", **workload.headers}
            key = workload.api_keys.get(name, api_key)
            if key:
                h["Authorization"] = f"Bearer {key}"
            if workload.tier_by == "header":
                h[workload.tier_header] = name
            self._headers[name] = h

    def body(self, rec: CallRecord, priority: int | None = None) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "max_tokens": rec.max_tokens, "stream": rec.stream}
        if priority is not None:
            payload["priority"] = priority
        prompt = self.prompts.make(rec.prompt_tokens - self.w.prompt_overhead_tokens)
        if self.w.chat:
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        if rec.stream:
            payload["stream_options"] = {"include_usage": True}
        if self.w.ignore_eos:
            payload["ignore_eos"] = True
        if self.w.extra_body:
            payload.update(self.w.extra_body)
        return orjson.dumps(payload)

    def headers(self, rec: CallRecord) -> dict[str, str]:
        h = self._headers[rec.tier]
        h = {**h, "x-request-id": f"{self.run_id}-{rec.rid}"}
        if rec.workflow_id is not None:
            h[self.w.workflow_header] = rec.workflow_id
        return h

    async def send(self, rec: CallRecord, unit_start: float | None = None) -> None:
        """Run one call of the workload, filling ``rec`` (``unit_start``: its workflow's first
        send, for ``priority: due``). Never raises except CancelledError."""
        prio = None
        if self.w.priority == "due":
            prio = due_priority(self.w.tiers[rec.tier], time.perf_counter() - self.t0, unit_start)
        body = self.body(rec, prio)
        await send_call(self.session, self.url, body, self.headers(rec), rec, self.t0, self.timeout)


BEST_EFFORT_PRIORITY = 10**12  # after every due time (ms): about 30 years into a run


def due_priority(tier: TierSpec, now: float, unit_start: float | None = None) -> int:
    """vLLM's ``priority`` (lower first) for an earliest-deadline-first queue at the engines
    (``--scheduling-policy priority``): the call's due time in milliseconds from the run's
    start — its first-token deadline (latency: ``now + TTFT``), its deadline (deadline:
    ``now + deadline``; a workflow call: its workflow's, ``first send + deadline``), or
    last (best effort). ``now``: the send time, in seconds from the run's start."""
    if tier.slo_class == "latency" and tier.ttft_ms is not None:
        return round(now * 1000 + tier.ttft_ms)
    if tier.deadline_ms is not None:
        start = unit_start if tier.slo_class == "workflow" and unit_start is not None else now
        return round(start * 1000 + tier.deadline_ms)
    return BEST_EFFORT_PRIORITY


async def send_call(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    rec: CallRecord,
    t0: float,
    client_timeout: aiohttp.ClientTimeout,
) -> None:
    """POST a prepared ``body`` to ``url`` and fill ``rec`` as the load generator does (times
    in seconds from ``t0`` on ``time.perf_counter``; ``rec.stream`` says whether to read an
    SSE stream; ``client_timeout`` bounds the whole call). The project's one streaming
    client: :class:`Client` sends its workload's calls through it, and the benchmarks that
    build their own bodies (``benchmarks.real``) do too. Never raises except CancelledError."""
    clock = time.perf_counter
    rec.sent = clock() - t0
    try:
        async with session.post(url, data=body, headers=headers, timeout=client_timeout) as resp:
            rec.http_status = resp.status
            if resp.status != 200:
                text = await resp.read()
                rec.status = "rejected" if resp.status == 429 else "error"
                rec.error = f"HTTP {resp.status}: {text[:200].decode('utf-8', 'replace')}"
            elif rec.stream and resp.content_type != "application/json":
                await _read_stream(resp, rec, t0)
            else:  # not streaming (or a server that answered a stream request with JSON)
                data = await resp.read()
                now = clock() - t0
                rec.chunks.append(now)
                _read_json(data, rec)
    except TimeoutError:
        rec.status = "timeout"
        rec.error = f"no complete response within {client_timeout.total or 0:g} s"
    except asyncio.CancelledError:
        rec.status = "cancelled"
        rec.error = rec.error or "the run ended before the response did"
        raise
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        rec.status = "error"
        rec.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        now = clock() - t0
        rec.done = now
        rec.end = rec.chunks[-1] if rec.chunks else now
        if rec.status == "pending":
            rec.status = "error"
            rec.error = rec.error or "response ended before any token"


async def _read_stream(resp: aiohttp.ClientResponse, rec: CallRecord, t0: float) -> None:
    clock = time.perf_counter
    add = rec.chunks.append
    buf = b""
    got_tokens = False
    read = resp.content.readany  # one call per socket read; b"" at the end
    while data := await read():
        now = clock() - t0
        if buf:
            data = buf + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        pos = 0
        while (cut := data.find(b"\n\n", pos)) >= 0:
            ev = data[pos:cut]
            pos = cut + 2
            if b'"choices":[{' in ev or b'"choices": [{' in ev:
                if not rec.chunks and b'"role"' in ev and any(m in ev for m in _ROLE_ONLY):
                    rec.lead = 1
                else:
                    got_tokens = True
                add(now)
                if b'usage"' in ev and (_USAGE[0] in ev or _USAGE[1] in ev):
                    _read_event(ev, rec)
            elif b"[DONE]" in ev:
                continue
            elif b"usage" in ev or b'"error"' in ev:
                _read_event(ev, rec)
        buf = data[pos:]
    if rec.status == "pending":
        if got_tokens:
            rec.status = "ok"
        else:
            rec.error = "the stream ended without a token"


def _read_event(ev: bytes, rec: CallRecord) -> None:
    start = ev.find(b"data:")
    if start < 0:
        return
    _read_json(ev[start + 5 :], rec, streaming=True)


def _read_json(data: bytes, rec: CallRecord, streaming: bool = False) -> None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        if not streaming:
            rec.status, rec.error = "error", f"response is not JSON: {data[:120]!r}"
        return
    if not isinstance(obj, dict):
        return
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            rec.usage_prompt = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            rec.usage_completion = usage["completion_tokens"]
    err = obj.get("error")
    if err or obj.get("object") == "error":
        rec.status = "error"
        msg = err.get("message") if isinstance(err, dict) else (err or obj.get("message"))
        rec.error = f"error event: {msg}"[:300]
    elif not streaming:
        rec.status = "ok" if obj.get("choices") else "error"
        if rec.status == "error":
            rec.error = "response has no choices"
