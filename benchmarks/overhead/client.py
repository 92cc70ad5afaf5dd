"""Load client for ``scripts/bench_overhead.py``: closed-loop aiohttp streams against one URL.

``run_load(url, streams=..., duration_s=..., max_tokens=..., stream=True)`` runs ``streams``
workers; each sends chat completions back to back (``ignore_eos``, fixed ``max_tokens``)
until ``duration_s`` has passed, finishes the request it is in, and stops. Bounded in
count (``max_requests`` per worker) and in time (a hard deadline of ``duration_s + grace_s``).

Measured per streamed response (vLLM chat chunks; one token per ``"delta":{"content":`` event):
* TTFT: request sent -> first read holding a token event;
* inter-token gaps: one gap per read (time since the previous read that held tokens), plus a
  zero gap for every further token in the same read (a read carrying k tokens delivered
  them together).
Non-streaming (``stream=False``): the response time (request sent -> whole body read)
goes into ``ttft_s``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

TOKEN_MARK = b'"delta":{"content":'
PROMPT = "Say something about the weather in a few words, please."


@dataclass
class LoadResult:
    tokens: int = 0
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def body(max_tokens: int, stream: bool, model: str) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": stream,
        }
    )


async def _one_stream(session: aiohttp.ClientSession, url: str, data: bytes, res: LoadResult) -> None:
    t0 = time.perf_counter()
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        if r.status != 200:
            await r.read()
            res.error(f"http {r.status}")
            return
        last: float | None = None
        n = 0
        ttft = res.ttft_s
        gaps = res.gaps_s
        async for chunk in r.content.iter_any():
            k = chunk.count(TOKEN_MARK)
            if not k:
                continue
            now = time.perf_counter()
            if last is None:
                ttft.append(now - t0)
                k -= 1
            else:
                gaps.append(now - last)
                k -= 1
            if k:
                gaps.extend([0.0] * k)
            n += k + 1
            last = now
        res.tokens += n
        res.requests += 1


async def _one_whole(session: aiohttp.ClientSession, url: str, data: bytes, res: LoadResult) -> None:
    t0 = time.perf_counter()
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        payload = await r.read()
        if r.status != 200:
            res.error(f"http {r.status}")
            return
        res.ttft_s.append(time.perf_counter() - t0)
        usage = orjson.loads(payload).get("usage") or {}
        res.tokens += int(usage.get("completion_tokens", 0))
        res.requests += 1


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    data: bytes,
    stream: bool,
    stop_at: float,
    max_requests: int,
    res: LoadResult,
    delay_s: float = 0.0,
) -> None:
    one = _one_stream if stream else _one_whole
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    for _ in range(max_requests):
        if time.perf_counter() >= stop_at:
            return
        try:
            await one(session, url, data, res)
        except (aiohttp.ClientError, OSError) as e:
            res.error(type(e).__name__)
            await asyncio.sleep(0.01)  # a broken proxy must not turn this into a busy loop


def make_session(streams: int) -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(limit=streams, limit_per_host=streams)
    return aiohttp.ClientSession(
        connector=conn,
        timeout=aiohttp.ClientTimeout(total=120.0),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


async def run_load(
    session: aiohttp.ClientSession,
    urls: list[str],
    *,
    streams: int,
    duration_s: float,
    max_tokens: int,
    stream: bool = True,
    model: str = "sim-llama",
    max_requests: int = 100_000,
    grace_s: float = 60.0,
    spread: bool = False,
    stagger_s: float = 0.0,
) -> LoadResult:
    """Closed-loop load (see the module docstring); worker i talks to ``urls[i % len(urls)]``;
    ``elapsed_s`` is start -> last worker done.

    ``spread``: worker i asks for ``max_tokens · (0.5 + i/streams)`` tokens (same mean, but
    streams finish at different steps instead of all together); ``stagger_s``: worker i
    starts ``i/streams · stagger_s`` late. Both keep closed-loop streams from arriving in
    synchronized bursts, which would make "added TTFT" mostly queueing behind the burst."""
    res = LoadResult()
    t0 = time.perf_counter()
    stop_at = t0 + duration_s
    tasks = []
    for i in range(streams):
        n = max(1, round(max_tokens * (0.5 + i / streams))) if spread else max_tokens
        data = body(n, stream, model)
        delay = stagger_s * i / streams
        w = _worker(session, urls[i % len(urls)], data, stream, stop_at, max_requests, res, delay)
        tasks.append(asyncio.create_task(w))
    try:
        async with asyncio.timeout(duration_s + grace_s):
            await asyncio.gather(*tasks)
    except TimeoutError:
        res.error("hard deadline")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    res.elapsed_s = time.perf_counter() - t0
    return res


async def warm_up(
    session: aiohttp.ClientSession, urls: list[str], streams: int, model: str = "sim-llama"
) -> int:
    """One short streaming request per stream, all at once: opens the client's and the
    proxy's keep-alive connections before a measured run. Returns the errors seen."""
    res = LoadResult()
    data = body(2, True, model)
    await asyncio.gather(
        *(
            _worker(session, urls[i % len(urls)], data, True, time.perf_counter() + 30.0, 1, res)
            for i in range(streams)
        )
    )
    return res.errors
