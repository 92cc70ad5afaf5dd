"""The router as a transparent proxy: real sockets, real simulated engines, the real
openai client. Streams through the router equal the engine's byte for byte; token
accounting equals the engine's usage; a client disconnect frees the engine slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from slorouter.simengine.server import SimFleet, serve_engines
from slorouter.values import Outcome, Status
from tests.routerkit import RouterHandle, router_config, run_router

MODEL = "sim-llama"


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with serve_engines(2, profile="cpu-tiny", seed=7) as f:
        yield f


@pytest.fixture
async def router(fleet: SimFleet) -> AsyncIterator[RouterHandle]:
    async with run_router(router_config(fleet.urls)) as r:
        yield r


def outcomes_of(router: RouterHandle) -> list[Outcome]:
    got: list[Outcome] = []
    router.services.tracker.add_listener(got.append)
    return got


async def raw_post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        return r.status, await r.read()


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "tell me about routers"}], "max_tokens": 12}
COMPLETION = {"model": MODEL, "prompt": "once upon a time there was", "max_tokens": 9}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/completions", {**COMPLETION, "stream": True}),
        ("/v1/completions", {**COMPLETION, "stream": True, "stream_options": {"include_usage": True}}),
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETION),
    ],
)
async def test_router_stream_is_byte_identical_and_counted(
    fleet: SimFleet, router: RouterHandle, path: str, body: dict[str, Any]
) -> None:
    outs = outcomes_of(router)
    s1, direct = await raw_post(fleet.urls[0] + path, body)
    s2, via = await raw_post(router.url + path, body)
    assert s1 == s2 == 200
    assert via == direct
    asked_usage = bool(body.get("stream_options", {}).get("include_usage")) or not body.get("stream")
    assert (b'"usage":{' in via) == asked_usage  # never a usage chunk the client did not ask for
    # the router's counts equal the engine's own usage (ask the engine for it directly)
    usage_body = {**body, "stream": False}
    usage_body.pop("stream_options", None)
    _, full = await raw_post(fleet.urls[0] + path, usage_body)
    usage = orjson.loads(full)["usage"]
    assert len(outs) == 1 and outs[0].status is Status.OK
    assert outs[0].output_tokens == usage["completion_tokens"]
    assert outs[0].prompt_tokens == usage["prompt_tokens"]
    assert router.services.tracker.all_zero()


async def test_openai_client_through_router(router: RouterHandle) -> None:
    outs = outcomes_of(router)
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="EMPTY", max_retries=0)
    try:
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=7
        )
        assert chat.usage is not None and chat.usage.completion_tokens == 7
        assert chat.choices[0].message.content

        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=11, stream=True
        )
        pieces = [c async for c in stream]
        assert all(c.usage is None for c in pieces)
        assert sum(1 for c in pieces if c.choices and c.choices[0].delta.content) == 11

        stream2 = await client.completions.create(
            model=MODEL, prompt="abc def", max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream2]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5

        comp = await client.completions.create(model=MODEL, prompt="abc def", max_tokens=4)
        assert comp.usage is not None and comp.usage.completion_tokens == 4
        models = await client.models.list()
        assert MODEL in [m.id for m in models.data]
    finally:
        await client.close()
    assert [o.output_tokens for o in outs] == [7, 11, 5, 4]
    assert all(o.status is Status.OK for o in outs)
    assert router.services.tracker.all_zero()


async def wait_for(cond: Any, within_s: float) -> bool:
    """Poll ``cond()`` until true or ``within_s`` (real synchronisation on observable state)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if cond():
            return True
        await asyncio.sleep(0.005)
    return bool(cond())


async def test_client_disconnect_aborts_engine_request(fleet: SimFleet) -> None:
    cfg = router_config(fleet.urls[:1])
    engine = fleet.engines[0]
    async with run_router(cfg) as router:
        outs = outcomes_of(router)
        body = {**CHAT, "max_tokens": 5000, "stream": True, "ignore_eos": True}
        async with aiohttp.ClientSession() as s:
            resp = await s.post(router.url + "/v1/chat/completions", json=body)
            got = b""
            while got.count(b"\n\n") < 5:
                got += await resp.content.readany()
            assert engine.model.num_running == 1
            steps_at_close = engine.model.steps_done
            resp.close()  # the client goes away mid-stream
            assert await wait_for(lambda: engine.model.num_running == 0, 5.0)
            # the engine dropped it within a step or two of the disconnect (one step in
            # flight when the close arrives, plus the one that notices)
            assert engine.model.steps_done - steps_at_close <= 2
        assert await wait_for(lambda: len(outs) == 1, 5.0)
        assert outs[0].status is Status.CANCELLED
        assert 4 <= outs[0].output_tokens < 5000  # 5 events seen = role chunk + 4 tokens
        assert router.services.tracker.all_zero()


async def test_mixed_completions_errors_and_disconnects_leave_zero(fleet: SimFleet) -> None:
    async with run_router(router_config(fleet.urls)) as router:
        outs = outcomes_of(router)
        async with aiohttp.ClientSession() as s:

            async def complete(i: int) -> None:
                b = {**CHAT, "max_tokens": 3 + i % 5, "stream": i % 2 == 0}
                async with s.post(router.url + "/v1/chat/completions", json=b) as r:
                    assert r.status == 200
                    await r.read()

            async def disconnect(i: int) -> None:
                b = {**CHAT, "max_tokens": 2000, "stream": True, "ignore_eos": True}
                r = await s.post(router.url + "/v1/chat/completions", json=b)
                await r.content.readany()
                r.close()

            async def bad(i: int) -> None:
                async with s.post(
                    router.url + "/v1/chat/completions", json={**CHAT, "model": "no-such-model"}
                ) as r:
                    assert r.status == 404  # the engine refuses; the router passes its error on
                    await r.read()

            jobs = (
                [complete(i) for i in range(12)]
                + [disconnect(i) for i in range(6)]
                + [bad(i) for i in range(3)]
            )
            await asyncio.gather(*jobs)
        assert await wait_for(lambda: len(outs) == 21, 10.0)
        statuses = sorted(o.status.value for o in outs)
        assert (
            statuses.count("ok") == 12 and statuses.count("cancelled") == 6 and statuses.count("error") == 3
        )
        assert await wait_for(lambda: all(e.model.num_running == 0 for e in fleet.engines), 5.0)
        assert router.services.tracker.all_zero()


async def test_tgi_native_routes(router: RouterHandle) -> None:
    async with serve_engines(1, profile="cpu-tiny", engine="tgi", seed=3) as tgi:
        cfg = router_config(tgi.urls, engine="tgi")
        async with run_router(cfg) as r:
            outs = outcomes_of(r)
            body = {"inputs": "hello world", "parameters": {"max_new_tokens": 6, "details": True}}
            s1, direct = await raw_post(tgi.urls[0] + "/generate_stream", body)
            s2, via = await raw_post(r.url + "/generate_stream", body)
            assert s1 == s2 == 200 and via == direct
            assert via.count(b'"token":') == 6
            s3, whole = await raw_post(r.url + "/generate", body)
            assert s3 == 200 and orjson.loads(whole)["details"]["generated_tokens"] == 6
            assert [o.output_tokens for o in outs] == [6, 6]
    # the TGI routes only go to TGI backends: the vLLM-only router has none
    status, err = await raw_post(router.url + "/generate", {"inputs": "x"})
    assert status == 503 and orjson.loads(err)["error"]["code"] == "no_backend"


async def test_metrics_and_health(router: RouterHandle) -> None:
    await raw_post(router.url + "/v1/chat/completions", {**CHAT, "stream": True})
    async with aiohttp.ClientSession() as s:
        async with s.get(router.url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        async with s.get(router.url + "/health") as r:
            assert r.status == 200
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = fams["slorouter_requests"]
    assert [
        (s.labels["tier"], s.labels["status"], s.value) for s in reqs.samples if s.name.endswith("_total")
    ] == [("standard", "ok", 1.0)]
    assert {s.labels["backend"] for s in fams["slorouter_backend_inflight_requests"].samples} == {"e0", "e1"}
    ttft = fams["slorouter_ttft_seconds"]
    count = [s.value for s in ttft.samples if s.name == "slorouter_ttft_seconds_count"]
    assert count == [1.0]
    itl_count = [s.value for s in fams["slorouter_itl_seconds"].samples if s.name.endswith("_count")]
    assert itl_count == [11.0]  # 12 tokens -> 11 gaps
    extra = {s.labels["backend"]: s.value for s in fams["slorouter_model_ttft_extra_seconds"].samples}
    assert set(extra) == {"e0", "e1"} and all(v >= 0.0 for v in extra.values())


async def test_passthrough_routes(fleet: SimFleet, router: RouterHandle) -> None:
    s1, direct = await raw_post(fleet.urls[0] + "/tokenize", {"model": MODEL, "prompt": "a b c"})
    s2, via = await raw_post(router.url + "/tokenize", {"model": MODEL, "prompt": "a b c"})
    assert s1 == s2 == 200 and via == direct
    async with aiohttp.ClientSession() as s, s.get(router.url + "/version") as r:
        assert r.status == 404  # not under /v1 and not a vLLM route we pass: an OpenAI-style 404
        assert "error" in orjson.loads(await r.read())
