"""Simulated engines over real sockets: the openai client, byte shapes of real vLLM, TGI,
metrics, errors, determinism, disconnects."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slorouter.models.profile import StepProfile
from slorouter.models.static import LinearStep
from slorouter.simengine.server import SimFleet, serve_engines

FAST = StepProfile(name="fast", step=LinearStep(0.002, 0.0001, 0.0, 1e-6), max_num_seqs=64)
REAL = Path(__file__).resolve().parent.parent / "data" / "vllm-0.32.0"


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with serve_engines(2, profile=FAST, seed=7) as f:
        yield f


async def post_raw(url: str, path: str, body: dict[str, Any]) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as s, s.post(url + path, json=body) as r:
        return r.status, await r.read(), r.headers.get("Content-Type", "")


def events(raw: bytes, prefix: bytes = b"data: ") -> list[bytes]:
    assert raw.endswith(b"\n\n")
    parts = raw[:-2].split(b"\n\n")
    assert all(p.startswith(prefix) for p in parts), parts
    return [p[len(prefix) :] for p in parts]


def shape(x: Any) -> Any:
    """Keys in order and null/bool values kept; strings and numbers abstracted."""
    if isinstance(x, dict):
        return [(k, shape(v)) for k, v in x.items()]
    if isinstance(x, list):
        return [shape(v) for v in x]
    if isinstance(x, str):
        return "str"
    if isinstance(x, bool) or x is None:
        return x
    return "num"


def stream_shapes(raw: bytes) -> list[Any]:
    return [e.decode() if e == b"[DONE]" else shape(orjson.loads(e)) for e in events(raw)]


CHAT = {"model": "sim-llama", "messages": [{"role": "user", "content": "Hello there"}], "ignore_eos": True}
CMPL = {"model": "sim-llama", "prompt": "Hello there", "ignore_eos": True}


@pytest.mark.parametrize(
    ("fixture", "path", "body"),
    [
        ("chat_stream.txt", "/v1/chat/completions", {**CHAT, "max_tokens": 4, "stream": True}),
        (
            "chat_stream_u.txt",
            "/v1/chat/completions",
            {**CHAT, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            "chat_stream_cu.txt",
            "/v1/chat/completions",
            {
                **CHAT,
                "max_tokens": 3,
                "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            },
        ),
        (
            "cmpl_stream.txt",
            "/v1/completions",
            {**CMPL, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}},
        ),
    ],
)
async def test_streams_have_the_shape_of_real_vllm(
    fleet: SimFleet, fixture: str, path: str, body: dict
) -> None:
    status, raw, ctype = await post_raw(fleet.urls[0], path, body)
    assert status == 200 and ctype == "text/event-stream; charset=utf-8"
    assert stream_shapes(raw) == stream_shapes((REAL / fixture).read_bytes())


@pytest.mark.parametrize(
    ("fixture", "path", "body"),
    [
        ("chat.txt", "/v1/chat/completions", {**CHAT, "max_tokens": 3}),
        ("cmpl.txt", "/v1/completions", {**CMPL, "prompt": [1, 2, 3, 4], "max_tokens": 3}),
    ],
)
async def test_responses_have_the_shape_of_real_vllm(
    fleet: SimFleet, fixture: str, path: str, body: dict
) -> None:
    status, raw, ctype = await post_raw(fleet.urls[0], path, body)
    assert status == 200 and ctype == "application/json"
    real = orjson.loads((REAL / fixture).read_bytes())
    ours = orjson.loads(raw)
    assert shape(ours) == shape(real)
    assert ours["usage"]["completion_tokens"] == 3
    if path == "/v1/completions":
        assert ours["usage"]["prompt_tokens"] == 4  # a token-id prompt counts as given


async def test_openai_client_streaming_and_not_agree(fleet: SimFleet) -> None:
    client = openai.AsyncOpenAI(base_url=fleet.urls[0] + "/v1", api_key="none", max_retries=0)
    try:
        msgs: Any = [{"role": "user", "content": "Tell me, in words, about the sea."}]
        full = await client.chat.completions.create(model="sim-llama", messages=msgs, max_tokens=20)
        stream = await client.chat.completions.create(
            model="sim-llama",
            messages=msgs,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, n_chunks, usage = "", 0, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                n_chunks += bool(c.delta.content)
        assert full.choices[0].message.content == text
        assert full.choices[0].finish_reason == "length"
        assert full.usage is not None and usage is not None
        assert usage.completion_tokens == full.usage.completion_tokens == n_chunks == 20
        # prompt rule: 3 + (4 + words and punctuation) per message
        assert usage.prompt_tokens == full.usage.prompt_tokens == 3 + 4 + 10

        comp = await client.completions.create(model="sim-llama", prompt="one two three", max_tokens=5)
        assert comp.usage is not None and comp.usage.prompt_tokens == 4 and comp.usage.completion_tokens == 5
        cstream = await client.completions.create(
            model="sim-llama", prompt="one two three", max_tokens=5, stream=True
        )
        ctext = "".join([c.choices[0].text async for c in cstream])
        assert ctext == comp.choices[0].text and len(ctext.split()) == 5
    finally:
        await client.close()


async def test_same_request_same_bytes_on_any_engine(fleet: SimFleet) -> None:
    body = {**CHAT, "max_tokens": 12, "stream": True}
    a = await post_raw(fleet.urls[0], "/v1/chat/completions", body)
    b = await post_raw(fleet.urls[1], "/v1/chat/completions", body)
    c = await post_raw(fleet.urls[0], "/v1/chat/completions", {**body, "max_tokens": 13})
    assert a == b
    assert a[1] != c[1]
    # asking for usage adds the usage chunk and changes nothing else
    u = await post_raw(
        fleet.urls[0], "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
    )
    ev_a, ev_u = events(a[1]), events(u[1])
    assert ev_u[:-3] == ev_a[:-2]  # every token chunk but the last is identical
    assert b'"choices":[]' in ev_u[-2] and ev_u[-1] == ev_a[-1] == b"[DONE]"


async def test_eos_length_and_min_tokens(fleet: SimFleet) -> None:
    lengths = []
    for i in range(12):
        body = {"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 64, "min_tokens": 3}
        _, raw, _ = await post_raw(fleet.urls[0], "/v1/chat/completions", body)
        d = orjson.loads(raw)
        n, fr = d["usage"]["completion_tokens"], d["choices"][0]["finish_reason"]
        assert 4 <= n <= 64 and fr == ("length" if n == 64 else "stop")
        lengths.append(n)
    assert len(set(lengths)) > 1  # drawn, not constant


async def test_errors_are_openai_shaped(fleet: SimFleet) -> None:
    url = fleet.urls[0]
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions", data=b"{not json") as r:
            assert r.status == 400
            err = (await r.json())["error"]
            assert err["code"] == 400 and err["type"] == "BadRequestError" and err["message"]
        async with s.post(url + "/v1/chat/completions", data=b"[]") as r:
            assert r.status == 400
        async with s.get(url + "/nope") as r:
            assert r.status == 404 and await r.json() == {"detail": "Not Found"}
    cases = [
        ("/v1/chat/completions", {"model": "sim-llama"}, 400, "messages"),
        ("/v1/completions", {**CMPL, "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {**CMPL, "max_tokens": "5"}, 400, "max_tokens"),
        ("/v1/completions", {**CMPL, "model": "other"}, 404, "model"),
        ("/v1/completions", {**CMPL, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ("/v1/completions", {"prompt": [1] * 9000}, 400, "input_tokens"),
        ("/v1/completions", {**CMPL, "n": 2}, 400, "n"),
        ("/v1/completions", {**CMPL, "priority": "1"}, 400, "priority"),
        ("/v1/completions", {**CMPL, "priority": 1.5}, 400, "priority"),
        ("/v1/completions", {**CMPL, "priority": None}, 400, "priority"),
        # a priority without --scheduling-policy priority (as vLLM)
        ("/v1/completions", {**CMPL, "priority": 3}, 400, "priority"),
    ]
    for path, body, status, param in cases:
        st, raw, _ = await post_raw(url, path, body)
        assert st == status, (body, raw)
        assert orjson.loads(raw)["error"]["param"] == param


async def test_models_version_tokenize_detokenize(fleet: SimFleet) -> None:
    url = fleet.urls[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/v1/models") as r:
            data = (await r.json())["data"]
            assert [m["id"] for m in data] == ["sim-llama"] and data[0]["max_model_len"] == 8192
        async with s.get(url + "/version") as r:
            assert "version" in await r.json()
        async with s.get(url + "/health") as r:
            assert r.status == 200
        async with s.post(url + "/tokenize", json={"prompt": "Hello there, world"}) as r:
            tok = await r.json()
            assert tok["count"] == 5 == len(tok["tokens"])  # BOS + Hello there , world
        async with s.post(url + "/tokenize", json={"messages": CHAT["messages"]}) as r:
            assert (await r.json())["count"] == 3 + 4 + 2
        async with s.post(url + "/detokenize", json={"tokens": [10, 11]}) as r:
            assert isinstance((await r.json())["prompt"], str)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse_prometheus(text: str) -> dict[str, float]:
    """A strict reader of the text exposition format: every line a HELP/TYPE comment or a
    sample of a declared metric with a float value. The reference parser must accept it too."""
    assert text.endswith("\n")
    families = list(text_string_to_metric_families(text))
    assert families and all(f.samples for f in families)
    types: dict[str, str] = {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped") and name not in types
            types[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            m = SAMPLE.match(line)
            assert m, line
            assert m.group(1) in types, f"sample before its TYPE: {line}"
            out[m.group(1) + (m.group(2) or "")] = float(m.group(4))
    return out


async def test_metrics_parse_and_track_running_requests(fleet: SimFleet) -> None:
    url = fleet.urls[0]
    eng = fleet.engines[0]
    async with aiohttp.ClientSession() as s:
        body = {**CMPL, "max_tokens": 2000, "ignore_eos": True, "stream": True}
        async with s.post(url + "/v1/completions", json=body) as r:
            await r.content.readuntil(b"\n\n")  # first token arrived: running
            async with s.get(url + "/metrics") as m:
                assert m.headers["Content-Type"].startswith("text/plain")
                vals = parse_prometheus(await m.text())
        lab = '{engine="0",model_name="sim-llama"}'
        assert vals["vllm:num_requests_running" + lab] == 1.0
        assert vals["vllm:num_requests_waiting" + lab] == 0.0
        assert 0 < vals["vllm:kv_cache_usage_perc" + lab] < 1
        assert vals["vllm:num_preemptions_total" + lab] == 0.0
        await poll(lambda: eng.model.num_running == 0)
        async with s.get(url + "/metrics") as m:
            vals = parse_prometheus(await m.text())
        assert vals["vllm:num_requests_running" + lab] == 0.0
        assert (
            vals['vllm:request_success_total{engine="0",finished_reason="abort",model_name="sim-llama"}'] == 1
        )


async def poll(cond: Any, within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def test_client_disconnect_drops_the_request_within_one_step() -> None:
    async with serve_engines(1, profile="cpu-tiny") as f:
        eng = f.engines[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", f.ports[0])
        body = orjson.dumps({**CMPL, "max_tokens": 5000, "ignore_eos": True, "stream": True})
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await reader.readuntil(b"data: ")  # streaming has begun
        await reader.readuntil(b"data: ")
        assert eng.model.num_running == 1 and eng.model.kv_tokens > 0
        steps_at_close = eng.model.steps_done
        writer.close()
        await poll(lambda: eng.model.num_running == 0)
        assert eng.model.steps_done - steps_at_close <= 1
        assert eng.model.kv_tokens == 0 and eng.num_streams == 0


async def test_disconnect_of_a_waiting_request_leaves_the_queue() -> None:
    prof = StepProfile(name="one", step=LinearStep(0.01, 0, 0, 0), max_num_seqs=1)
    async with serve_engines(1, profile=prof) as f:
        eng = f.engines[0]
        async with aiohttp.ClientSession() as s:
            long = asyncio.create_task(
                post_raw(f.urls[0], "/v1/completions", {**CMPL, "max_tokens": 60, "ignore_eos": True})
            )
            await poll(lambda: eng.model.num_running == 1)
            waiting = asyncio.create_task(
                s.post(f.urls[0] + "/v1/completions", json={**CMPL, "max_tokens": 5})
            )
            await poll(lambda: eng.model.num_waiting == 1)
            waiting.cancel()
            await poll(lambda: eng.model.num_waiting == 0)
            assert eng.model.num_running == 1
            status, raw, _ = await long
            assert status == 200 and orjson.loads(raw)["usage"]["completion_tokens"] == 60


async def test_tgi_generate_stream_and_chat() -> None:
    async with serve_engines(1, profile=FAST, engine="tgi", model="sim-tgi") as f:
        url = f.urls[0]
        body = {
            "inputs": "What is deep learning?",
            "parameters": {"max_new_tokens": 5, "details": True, "ignore_eos": True},
        }
        status, raw, ctype = await post_raw(url, "/generate_stream", body)
        assert status == 200 and ctype.startswith("text/event-stream")
        evs = [orjson.loads(e) for e in events(raw, b"data:")]
        assert [e["index"] for e in evs] == [1, 2, 3, 4, 5]
        assert list(evs[0]) == ["index", "token", "generated_text", "details"]
        assert list(evs[0]["token"]) == ["id", "text", "logprob", "special"]
        assert all(e["generated_text"] is None and e["details"] is None for e in evs[:-1])
        assert evs[-1]["generated_text"] == "".join(e["token"]["text"] for e in evs)
        assert evs[-1]["details"] == {
            "finish_reason": "length",
            "generated_tokens": 5,
            "seed": None,
            "input_length": 5,  # What is deep learning ?
        }
        status, raw, _ = await post_raw(url, "/generate", body)
        gen = orjson.loads(raw)
        assert gen["generated_text"] == evs[-1]["generated_text"] and len(gen["details"]["tokens"]) == 5

        chat = {
            "model": "tgi",
            "messages": CHAT["messages"],
            "max_tokens": 3,
            "stream": True,
            "ignore_eos": True,
        }
        chat["stream_options"] = {"include_usage": True}
        status, raw, _ = await post_raw(url, "/v1/chat/completions", chat)
        evs2 = events(raw, b"data:")
        assert evs2[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in evs2[:-1]]
        assert len(chunks) == 3 and list(chunks[0])[:2] == ["object", "id"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/info") as r:
                assert (await r.json())["model_id"] == "sim-tgi"
            async with s.get(url + "/metrics") as r:
                vals = parse_prometheus(await r.text())
                assert vals["tgi_queue_size"] == 0 and vals["tgi_request_count"] == 3
            async with s.post(url + "/generate", json={"inputs": ""}) as r:
                assert r.status == 422 and (await r.json())["error_type"] == "validation"


async def test_token_counters_follow_the_streams(fleet: SimFleet) -> None:
    url = fleet.urls[1]
    lab = '{engine="0",model_name="sim-llama"}'
    for n in (5, 7):
        await post_raw(url, "/v1/completions", {**CMPL, "max_tokens": n})
    await post_raw(url, "/v1/chat/completions", {**CHAT, "max_tokens": 3, "stream": True})
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as m:
        vals = parse_prometheus(await m.text())
    assert vals["vllm:generation_tokens_total" + lab] == 5 + 7 + 3
    assert vals["vllm:prompt_tokens_total" + lab] == 3 + 3 + (3 + 4 + 2)
    ok = 'vllm:request_success_total{engine="0",finished_reason="length",model_name="sim-llama"}'
    assert vals[ok] == 3
