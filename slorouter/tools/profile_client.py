"""The load side of ``slorouter profile``: streaming requests to an engine, closed-loop levels.

Engines (``--engine``):

- ``vllm``: ``POST /v1/chat/completions`` with ``ignore_eos``, ``max_tokens`` and
  ``stream_options: {include_usage, continuous_usage_stats}`` — every chunk then carries the
  running token count, so multi-token chunks are counted exactly;
- ``openai``: the same without the vLLM extensions (only the final ``usage``; token
  counts are spread over the chunks, see :func:`~slorouter.tools.profile_fit.fallback_events`);
- ``tgi``: ``POST /generate_stream``; one event is one token.

Prompts are made of common words behind a unique prefix (so prefix caching cannot skip their
prefill) and calibrated against the engine's own ``usage.prompt_tokens`` to the requested length.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from slorouter.tools.profile_fit import Trace, fallback_events

ENGINES = ("vllm", "tgi", "openai")
_WORD_TEXT = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or "
    "had by word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make "
    "thing see him two has look more day could go come did number sound no most people my over know "
    "water than call first who may down side been now find any new work part take get place made "
    "live where after back little only round man year came show every good me give our under name "
    "very through just form sentence great think say help low line differ turn cause much mean "
    "before move right boy old too same tell does set three want air well also play small end"
)
WORDS = tuple(_WORD_TEXT.split())


class ProfileClientError(RuntimeError):
    """The backend cannot be profiled (unreachable, refuses the request, no usage...)."""


@dataclass(frozen=True, slots=True)
class Request:
    prompt: str
    max_tokens: int


def make_prompt(n_words: int, tag: str, seed: int) -> str:
    rng = random.Random(f"{seed}:{tag}")
    return f"[{tag}] " + " ".join(rng.choice(WORDS) for _ in range(max(1, n_words)))


class EngineClient:
    def __init__(self, session: aiohttp.ClientSession, target: str, engine: str, model: str) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.session = session
        self.target = target.rstrip("/")
        self.engine = engine
        self.model = model

    def _request(self, req: Request) -> tuple[str, dict[str, Any]]:
        if self.engine == "tgi":
            return "/generate_stream", {
                "inputs": req.prompt,
                "parameters": {"max_new_tokens": req.max_tokens, "details": True},
            }
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": req.prompt}],
            "max_tokens": req.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.engine == "vllm":
            body["ignore_eos"] = True
            body["stream_options"]["continuous_usage_stats"] = True
        return "/v1/chat/completions", body

    async def run(self, req: Request, timeout_s: float = 600.0) -> Trace:
        """Send one streaming request; the trace's times are ``time.perf_counter()``."""
        path, body = self._request(req)
        start = time.perf_counter()
        chunk_times: list[float] = []
        events: list[tuple[float, float]] = []  # exact, from per-chunk usage
        prompt_tokens = 0
        final_tokens = 0
        try:
            async with self.session.post(
                self.target + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:300]
                    return Trace(start, 0, (), f"HTTP {resp.status} from {self.target + path}: {text}")
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if not data or data == b"[DONE]":
                        continue
                    now = time.perf_counter()
                    msg = orjson.loads(data)
                    if self.engine == "tgi":
                        if msg.get("token") is not None:
                            chunk_times.append(now)
                        continue
                    usage = msg.get("usage")
                    choices = msg.get("choices") or []
                    if usage:
                        prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        n = int(usage.get("completion_tokens") or 0)
                        if choices and n > (events[-1][1] if events else 0):
                            events.append((now, float(n)))
                        final_tokens = max(final_tokens, n)
                    if choices and "role" not in (choices[0].get("delta") or {}):
                        chunk_times.append(now)
        except (aiohttp.ClientError, TimeoutError) as e:
            return Trace(start, 0, (), f"{type(e).__name__}: {e}")
        if self.engine == "tgi":
            final_tokens = len(chunk_times)
        if not events:
            events = list(fallback_events(chunk_times, final_tokens))
        return Trace(start, prompt_tokens, tuple(events))

    async def model_name(self) -> str:
        if self.engine == "tgi":
            return self.model or "tgi"
        if self.model:
            return self.model
        try:
            async with self.session.get(self.target + "/v1/models") as resp:
                data = await resp.json(content_type=None)
            return str(data["data"][0]["id"])
        except aiohttp.ClientConnectionError:
            raise
        except (aiohttp.ClientError, KeyError, IndexError, TypeError, ValueError) as e:
            raise ProfileClientError(f"cannot read the model list from {self.target}/v1/models ({e}); "
                                     "pass --model NAME") from None  # fmt: skip


async def calibrate_prompt(client: EngineClient, prompt_tokens: int, seed: int) -> tuple[int, int]:
    """Words per prompt so that the engine reports about ``prompt_tokens``; (words, tokens)."""
    probes: list[tuple[int, int]] = []  # (words, tokens)
    words = prompt_tokens
    best = (words, 0)
    for i in range(5):
        tr = await client.run(Request(make_prompt(words, f"c0-r{i}", seed), 2), timeout_s=120)
        if tr.error:
            raise ProfileClientError(tr.error)
        if tr.prompt_tokens <= 0:  # engine reports no prompt usage (tgi): take the words as tokens
            return words, prompt_tokens
        probes.append((words, tr.prompt_tokens))
        best = min(probes, key=lambda p: abs(p[1] - prompt_tokens))
        if abs(best[1] - prompt_tokens) <= max(1, prompt_tokens // 100):
            break
        # tokens ≈ a + b·words (the template and the tag cost a fixed a): solve from two probes
        (w1, t1), (w2, t2) = probes[-2:] if len(probes) > 1 else ((0, 0), probes[0])
        b = (t2 - t1) / (w2 - w1) if w2 != w1 and t2 != t1 else t2 / max(1, w2)
        words = max(1, round(w2 + (prompt_tokens - t2) / max(b, 1e-3)))
        if any(w == words for w, _ in probes):
            break
    return best


async def run_level(
    client: EngineClient,
    concurrency: int,
    n_requests: int,
    words: int,
    max_tokens: int,
    seed: int,
    on_done: Callable[[Trace], None] | None = None,
) -> tuple[list[Trace], float]:
    """Closed loop: ``concurrency`` workers send ``n_requests`` requests; (traces, wall seconds)."""
    traces: list[Trace] = []
    counter = iter(range(n_requests))

    async def worker() -> None:
        for i in counter:
            tr = await client.run(Request(make_prompt(words, f"c{concurrency}-r{i}", seed), max_tokens))
            traces.append(tr)
            if on_done is not None:
                on_done(tr)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return traces, time.perf_counter() - t0


async def scrape_vllm_itl(session: aiohttp.ClientSession, target: str) -> tuple[float, float] | None:
    """(sum, count) of vLLM's own ``vllm:inter_token_latency_seconds`` histogram, if exposed."""
    try:
        async with session.get(target.rstrip("/") + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                return None
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    s = c = 0.0
    seen = False
    for line in text.splitlines():
        if line.startswith("vllm:inter_token_latency_seconds_sum"):
            s += float(line.rsplit(" ", 1)[1])
            seen = True
        elif line.startswith("vllm:inter_token_latency_seconds_count"):
            c += float(line.rsplit(" ", 1)[1])
    return (s, c) if seen else None


async def scrape_vllm_kv_capacity(session: aiohttp.ClientSession, target: str) -> int | None:
    """KV capacity in tokens from vLLM's ``vllm:cache_config_info`` labels, if exposed."""
    try:
        async with session.get(target.rstrip("/") + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
            text = await r.text() if r.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError):
        return None
    for line in text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(
                kv.split("=", 1)
                for kv in line[line.index("{") + 1 : line.rindex("}")].split('",')
                if "=" in kv
            )
            clean = {k.strip(): v.strip().strip('"') for k, v in labels.items()}
            for key in ("kv_cache_size_tokens",):
                if clean.get(key, "").isdigit():
                    return int(clean[key])
            if clean.get("num_gpu_blocks", "").isdigit() and clean.get("block_size", "").isdigit():
                return int(clean["num_gpu_blocks"]) * int(clean["block_size"])
    return None
