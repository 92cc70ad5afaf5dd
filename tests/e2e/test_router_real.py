"""The router in front of two real vLLM servers: what clients see and what the router counts.

* the real ``openai`` client (chat and completions, streaming and not) gets through the
  router the bytes vLLM sends it directly for the same request (ids and ``created`` aside,
  which vLLM makes anew per request; greedy decoding makes the tokens the same): no extra
  usage chunk although the router asked vLLM for one, ``system_fingerprint`` where vLLM puts
  it — and the router's token counts per request are vLLM's ``usage``;
* a client that disconnects mid-stream: vLLM aborts the request and the router's counters
  return to zero;
* ``vllm bench serve`` runs through the router unchanged and completes every request.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from slorouter.values import Outcome, Status
from tests.e2e.conftest import RealVllm
from tests.routerkit import RouterHandle, router_config, run_router

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(900)]  # includes install + start on a clean CI

_ID = re.compile(rb'"id":"[^"]*"')
_CREATED = re.compile(rb'"created":\d+')


def normalised(raw: bytes) -> bytes:
    """vLLM's per-request ``id`` and ``created`` replaced by constants; nothing else changed."""
    return _CREATED.sub(b'"created":0', _ID.sub(b'"id":"-"', raw))


def events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e]


_TEXT = re.compile(rb'"(?:content|text)":"((?:[^"\\]|\\.)*)"')


def canonical(raw: bytes) -> tuple[list[bytes], str]:
    """A stream as (its events' bytes with the text taken out, the whole text), where a run of
    plain token events counts as one: how many tokens vLLM puts in one event depends on how
    far its API server lags behind the engine (under load: several; on this shared machine
    even at one stream), so two runs of the same greedy request differ only in that."""
    templates: list[bytes] = []
    text = ""
    for e in events(normalised(raw)):
        m = _TEXT.search(e)
        if m is not None:
            text += json.loads(b'"' + m.group(1) + b'"')
            e = e[: m.start(1)] + e[m.end(1) :]
        plain = b'"finish_reason":null' in e and b'"role"' not in e
        if plain and templates and templates[-1] == e:
            continue
        templates.append(e)
    return templates, text


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def running_in_vllm(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return sum(
        float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith("vllm:num_requests_running{")
    )


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="EMPTY", max_retries=0, timeout=60.0)


CHAT = {"messages": [{"role": "user", "content": "Write a short poem about the sea."}]}
COMPLETION = {"prompt": "def fibonacci(n):"}
CASES = [
    pytest.param("chat", False, None, id="chat"),
    pytest.param("chat", True, None, id="chat-stream"),
    pytest.param("chat", True, {"include_usage": True}, id="chat-stream-usage"),
    pytest.param("completions", False, None, id="completions"),
    pytest.param("completions", True, None, id="completions-stream"),
    pytest.param("completions", True, {"include_usage": True}, id="completions-stream-usage"),
]


async def _raw(c: openai.AsyncOpenAI, kind: str, body: dict[str, Any]) -> tuple[bytes, str]:
    """The response body exactly as the openai client received it, and its content type."""
    api = c.chat.completions if kind == "chat" else c.completions
    async with api.with_streaming_response.create(**body) as resp:
        data = b"".join([b async for b in resp.iter_bytes()])
        return data, resp.headers.get("content-type", "")


@pytest.fixture
async def router(vllm_servers: RealVllm) -> Any:
    async with run_router(router_config(vllm_servers.urls, policy="round-robin")) as r:
        yield r


@pytest.mark.parametrize(("kind", "stream", "stream_options"), CASES)
async def test_openai_client_through_the_router_gets_what_vllm_sends(
    vllm_servers: RealVllm,
    router: RouterHandle,
    kind: str,
    stream: bool,
    stream_options: dict[str, Any] | None,
) -> None:
    outcomes: list[Outcome] = []
    router.services.tracker.add_listener(outcomes.append)
    body: dict[str, Any] = {
        "model": vllm_servers.model,
        **(CHAT if kind == "chat" else COMPLETION),
        "max_tokens": 24,
        "temperature": 0.0,
        "stream": stream,
    }
    if stream_options is not None:
        body["stream_options"] = stream_options
    async with client(router.url) as via, client(vllm_servers.urls[0]) as direct:
        await _compare(router, via, direct, kind, stream, stream_options, body, outcomes)


async def _compare(
    router: RouterHandle,
    via: openai.AsyncOpenAI,
    direct: openai.AsyncOpenAI,
    kind: str,
    stream: bool,
    stream_options: dict[str, Any] | None,
    body: dict[str, Any],
    outcomes: list[Outcome],
) -> None:
    routed = [await _raw(via, kind, body) for _ in range(2)]  # round robin: one per server
    direct_raw, direct_type = await _raw(direct, kind, body)
    for raw, ctype in routed:
        assert ctype == direct_type
        if stream:
            assert canonical(raw) == canonical(direct_raw)
        else:
            assert normalised(raw) == normalised(direct_raw)
    await wait_until(lambda: len(outcomes) == 2, 5.0, "the router to finish both requests")
    assert sorted(o.backend or "" for o in outcomes) == ["e0", "e1"]

    # vLLM's own count of the request's tokens (asked directly, with usage)
    if stream:
        raw, _ = await _raw(direct, kind, {**body, "stream_options": {"include_usage": True}})
        *_, last, done = events(raw)
        assert done == b"data: [DONE]"
        usage = json.loads(last[len(b"data: ") :])["usage"]
        if stream_options is None:  # the router asked vLLM for usage, and took it out again
            for raw, _ in routed:
                evs = events(raw)
                assert b'"usage"' not in raw
                fp = [i for i, e in enumerate(evs) if b'"system_fingerprint"' in e]
                assert fp == [len(evs) - 2], "system_fingerprint belongs on the last token chunk"
    else:
        usage = json.loads(direct_raw)["usage"]
    for o in outcomes:
        assert o.status is Status.OK
        assert (o.prompt_tokens, o.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])

    # and the client, used as people use it, parses the stream the router forwards
    api = via.chat.completions if kind == "chat" else via.completions
    got = await api.create(**body)
    if stream:
        chunks = [c async for c in got]
        assert all(c.usage is None for c in chunks) == (stream_options is None)
        last_token = chunks[-2] if stream_options else chunks[-1]
        assert last_token.choices[0].finish_reason == "length"
        # vLLM's place for it: the usage chunk if there is one, else the last token chunk
        assert chunks[-1].system_fingerprint is not None
        text = "".join(
            (ch.delta.content or "") if kind == "chat" else ch.text for c in chunks for ch in c.choices
        )
    else:
        assert got.usage is not None and got.usage.completion_tokens == usage["completion_tokens"]
        text = got.choices[0].message.content if kind == "chat" else got.choices[0].text
    assert text, "the model produced no text"
    assert text == (canonical(direct_raw)[1] if stream else _text_of(json.loads(direct_raw), kind))
    await wait_until(lambda: len(outcomes) == 3, 5.0, "the router to finish the request")
    assert router.services.tracker.all_zero()


def _text_of(obj: dict[str, Any], kind: str) -> str:
    ch = obj["choices"][0]
    return str(ch["message"]["content"] if kind == "chat" else ch["text"])


async def test_a_client_disconnect_through_the_router_aborts_the_request_in_vllm(
    vllm_servers: RealVllm, router: RouterHandle
) -> None:
    outcomes: list[Outcome] = []
    tracker = router.services.tracker
    tracker.add_listener(outcomes.append)
    async with client(router.url) as via:
        await _leave_mid_stream(vllm_servers, router, via, outcomes)


async def _leave_mid_stream(
    vllm_servers: RealVllm, router: RouterHandle, via: openai.AsyncOpenAI, outcomes: list[Outcome]
) -> None:
    tracker = router.services.tracker
    stream = await via.chat.completions.create(
        model=vllm_servers.model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=900,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    seen = 0  # tokens the client got (vLLM's first chunk carries the role and no token)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
        if seen >= 5:
            break
    async with aiohttp.ClientSession() as s:
        running = [await running_in_vllm(s, u) for u in vllm_servers.urls]
        assert sorted(running) == [0, 1], running
        assert tracker.in_flight() == 1
        await stream.close()  # the client leaves mid-stream
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0  # the ~895 tokens left would take > 8 s at >= 9 ms per step
        while sum([await running_in_vllm(s, u) for u in vllm_servers.urls]) != 0:
            assert loop.time() < deadline, "vLLM still runs the request after the client left"
            await asyncio.sleep(0.1)
    await wait_until(tracker.all_zero, 3.0, "the router's counters to return to zero")
    assert [o.status for o in outcomes] == [Status.CANCELLED]
    assert seen <= outcomes[0].output_tokens < 900  # at least what the client got, far from all


NUM_PROMPTS = 24


async def test_vllm_bench_serve_through_the_router(
    vllm_servers: RealVllm, router: RouterHandle, tmp_path: Path
) -> None:
    outcomes: list[Outcome] = []
    router.services.tracker.add_listener(outcomes.append)
    cmd = [
        str(vllm_servers.python),
        "-m",
        "vllm.entrypoints.cli.main",
        "bench",
        "serve",
        "--backend",
        "openai-chat",
        "--base-url",
        router.url,
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        vllm_servers.model,
        "--tokenizer",
        str(vllm_servers.model_dir),
        "--dataset-name",
        "random",
        "--random-input-len",
        "64",
        "--random-output-len",
        "32",
        "--num-prompts",
        str(NUM_PROMPTS),
        "--max-concurrency",
        "8",
        "--ignore-eos",
        "--header",
        "x-slo-tier=interactive",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--result-filename",
        "bench.json",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_TARGET_DEVICE": "cpu"}
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = out.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["completed"] == NUM_PROMPTS, log[-3000:]
    assert result["failed"] == 0
    # the router served every request in the tier the header asked for, and counted what
    # vLLM counted (the last NUM_PROMPTS outcomes; before them came the bench's ready check)
    await wait_until(lambda: len(outcomes) >= NUM_PROMPTS, 5.0, "the router to finish every request")
    bench = outcomes[-NUM_PROMPTS:]
    assert all(o.status is Status.OK and o.tier == "interactive" for o in outcomes)
    assert {o.backend for o in bench} == {"e0", "e1"}
    assert sum(o.output_tokens for o in bench) == result["total_output_tokens"] == 32 * NUM_PROMPTS
    assert sum(o.prompt_tokens for o in bench) == result["total_input_tokens"]
    assert router.services.tracker.all_zero()
    print(
        f"\nvllm bench serve through the router: {result['completed']} completed, "
        f"mean TTFT {result['mean_ttft_ms']:.1f} ms, mean TPOT {result['mean_tpot_ms']:.1f} ms, "
        f"mean ITL {result['mean_itl_ms']:.1f} ms"
    )
