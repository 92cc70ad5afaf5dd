"""The client side of the real-vLLM benchmark: closed-loop streams through the load
generator's client, and vLLM's own inter-token latency from its ``/metrics``.

A request is a chat completion of ``max_tokens`` with ``ignore_eos`` (its prompt a few dozen
words, numbered so no two are alike), streamed without ``stream_options``; the load
generator's client (:func:`loadgen.client.send_call`) times every chunk that carries
``choices`` and marks vLLM's leading role-only chunk, so the token-bearing chunks are
``CallRecord.token_chunks`` (vLLM 0.32 puts its last token and ``finish_reason`` in one
chunk: tests/data/vllm-0.32.0/chat_stream.txt).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import orjson

from loadgen.client import send_call
from loadgen.records import CallRecord

MODEL = "tiny"
WORDS = "the quick brown fox jumps over the lazy dog while a small cat reads old books " * 3
_ids = itertools.count()


@dataclass
class Record:
    """One request as the client saw it."""

    tier: str | None
    ok: bool
    ttft_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)  # between token-bearing chunks


async def stream_one(s: aiohttp.ClientSession, url: str, tier: str | None, tokens: int) -> Record:
    """One streamed request to ``url`` (the session's timeout bounds it: a miss, never a hang).
    A request that failed part way keeps the gaps it saw (``ok`` is False)."""
    rid = next(_ids)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"#{rid} {WORDS}"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Content-Type": "application/json"}
    if tier:
        headers["x-slo-tier"] = tier
    rec = CallRecord(rid, rid, 0, tier or "", True, 0, tokens, 0.0)
    await send_call(s, url + "/v1/chat/completions", orjson.dumps(body), headers, rec, 0.0, s.timeout)
    times = rec.token_chunks
    out = Record(tier, rec.ok)
    if times and rec.sent is not None:
        out.ttft_s = times[0] - rec.sent
        out.gaps_s = [b - a for a, b in itertools.pairwise(times)]
    return out


async def closed_loop(
    s: aiohttp.ClientSession,
    url: str,
    users: Mapping[str | None, int],
    tokens: int,
    *,
    seconds: float | None = None,
    requests: int | None = None,
) -> list[Record]:
    """``users[tier]`` users per tier, each sending its next request when the previous one
    ends, for ``seconds`` (then in-flight requests finish) or until ``requests`` were sent."""
    out: list[Record] = []
    end = None if seconds is None else time.monotonic() + seconds
    budget = itertools.count()

    async def user(tier: str | None) -> None:
        while (end is None or time.monotonic() < end) and (requests is None or next(budget) < requests):
            out.append(await stream_one(s, url, tier, tokens))

    await asyncio.gather(*(user(t) for t, n in users.items() for _ in range(n)))
    return out


async def vllm_itl(s: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(sum, count) of vLLM's ``inter_token_latency_seconds`` histogram."""
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    tot = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        for k in tot:
            if line.startswith(f"vllm:inter_token_latency_seconds{k}{{"):
                tot[k] += float(line.rsplit(" ", 1)[1])
    return tot["_sum"], tot["_count"]


def itl_between(before: tuple[float, float], after: tuple[float, float]) -> float:
    n = after[1] - before[1]
    return (after[0] - before[0]) / n if n > 0 else float("nan")
