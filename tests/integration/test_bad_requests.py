"""Hostile and broken input against the live router (real sockets on 127.0.0.1): size
and header limits, slow clients, invalid bodies, hop-by-hop headers, no open proxy,
admin token, entitlement, and keys never logged or forwarded."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from slorouter.simengine.server import SimFleet, serve_engines
from tests.routerkit import RouterHandle, router_config, run_router
from tests.servekit import serve_app

KEY_BATCH = "sk-batch-0123456789abcdef"
KEY_ALL = "sk-all-fedcba9876543210"
ADMIN = "admin-token-5f4dcc3b5aa765d61d8327deb882cf99"
CHAT = {"model": "sim-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@asynccontextmanager
async def capture_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An engine that records the headers it receives and answers with hop-by-hop
    headers of its own (which must not reach the client)."""
    seen: list[dict[str, str]] = []

    async def gen(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        await request.read()
        body = {"id": "x", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 3}}
        body["usage"] |= {"completion_tokens": 1, "total_tokens": 4}
        headers = {
            "Connection": "keep-alive, X-Hop-Secret",
            "X-Hop-Secret": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "X-End-To-End": "kept",
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

    async def models(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"object": "list", "data": [{"id": "sim-llama", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", models)
    app.router.add_post("/{tail:.*}", gen)
    async with serve_app(app) as base:
        yield base, seen


def keyed_config(urls: list[str], **extra: Any) -> Any:
    return router_config(
        urls,
        extra={
            "routing": {
                "allow_anonymous": False,
                "default_tier": "standard",
                "keys": [
                    {"name": "batch-key", "key": KEY_BATCH, "tiers": ["batch"]},
                    {"name": "all-key", "key": KEY_ALL, "tiers": ["interactive", "standard", "batch"]},
                ],
                "aliases": {"fast-llama": {"model": "sim-llama", "tier": "interactive"}},
            },
            "server": {"client_read_timeout_s": 0.5, "max_body_bytes": 4096, "max_header_count": 30},
            "admin": {"token_env": "TEST_SLOROUTER_ADMIN"},
            **extra,
        },
    )


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with serve_engines(1, profile="cpu-tiny", seed=3) as f:
        yield f


@pytest.fixture
async def router(fleet: SimFleet, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RouterHandle]:
    monkeypatch.setenv("TEST_SLOROUTER_ADMIN", ADMIN)
    async with run_router(keyed_config(fleet.urls)) as r:
        yield r


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(
    url: str, method: str = "POST", body: Any = None, headers: dict[str, str] | None = None, data: Any = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        kw: dict[str, Any] = {"headers": headers}
        if data is not None:
            kw["data"] = data
        elif body is not None:
            kw["json"] = body
        async with s.request(method, url, **kw) as r:
            raw = await r.read()
            try:
                return r.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return r.status, raw


async def raw_exchange(port: int, data: bytes, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes; (what came back, seconds)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    w.write(data)
    await w.drain()
    try:
        got = await asyncio.wait_for(r.read(), wait_s)
    finally:
        w.close()
    return got, time.monotonic() - t0


def port_of(router: RouterHandle) -> int:
    return int(router.url.rsplit(":", 1)[1])


def is_openai_error(body: Any, status: int) -> bool:
    return (
        isinstance(body, dict) and {"message", "type", "code"} <= set(body.get("error", {})) and status >= 400
    )


# -- limits and slow clients ------------------------------------------------------------------


async def test_body_over_the_limit_is_413_with_or_without_content_length(router: RouterHandle) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
    s, b = await call(router.url + "/v1/chat/completions", body=big, headers=auth(KEY_ALL))
    assert s == 413 and is_openai_error(b, s)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    s, b = await call(router.url + "/v1/chat/completions", data=chunks(), headers=auth(KEY_ALL))
    assert s == 413 and is_openai_error(b, s)
    assert router.services.tracker.all_zero()


@pytest.mark.parametrize(
    "head",
    [
        b"".join(b"X-H%d: v\r\n" % i for i in range(40)),  # too many header fields
        b"X-Long: " + b"a" * 9000 + b"\r\n",  # a header line over the limit
    ],
)
async def test_header_limits_get_a_400_and_a_closed_connection(router: RouterHandle, head: bytes) -> None:
    req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head + b"Content-Length: 2\r\n\r\n{}"
    got, took = await raw_exchange(port_of(router), req)
    assert got.startswith(b"HTTP/1.") and b" 400 " in got.split(b"\r\n", 1)[0]
    assert took < 2.0  # answered and closed at once (read() returned at EOF)


async def test_slow_body_gets_408_and_slow_headers_are_cut(router: RouterHandle) -> None:
    partial = b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"mo'
    got, took = await raw_exchange(port_of(router), partial)
    assert b" 408 " in got.split(b"\r\n", 1)[0] and b'"timeout_error"' in got
    assert 0.4 <= took < 3.0
    got, took = await raw_exchange(port_of(router), b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert got == b"" and 0.4 <= took < 3.0  # slowloris: closed after client_read_timeout_s
    assert router.services.tracker.all_zero()


# -- invalid bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"text"', "invalid_json"),
        (b'{"messages": "hi"}', "invalid_value"),
        (b'{"messages": []}', "invalid_value"),
        (b'{"messages": [1]}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 0}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "model": 5}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream_options": []}', "invalid_value"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"[" * 2000 + b"]" * 2000, "invalid_json"),
    ],
)
async def test_invalid_bodies_get_openai_style_400(router: RouterHandle, data: bytes, code: str) -> None:
    s, b = await call(router.url + "/v1/chat/completions", data=data, headers=auth(KEY_ALL))
    assert s == 400 and is_openai_error(b, s) and b["error"]["code"] == code, b


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_body_that_does_not_decode_is_400(router: RouterHandle, encoding: str) -> None:
    headers = {**auth(KEY_ALL), "Content-Encoding": encoding, "Content-Type": "application/json"}
    s, _ = await call(router.url + "/v1/chat/completions", data=orjson.dumps(CHAT), headers=headers)
    assert s == 400
    if encoding == "gzip":  # a real gzip body is decoded, and the engine gets plain JSON
        s, b = await call(
            router.url + "/v1/chat/completions", data=gzip.compress(orjson.dumps(CHAT)), headers=headers
        )
        assert s == 200 and b["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("wid", ["w" * 257, "a\tb"])
async def test_workflow_ids_are_bounded(router: RouterHandle, wid: str) -> None:
    headers = {**auth(KEY_ALL), "x-slo-workflow-id": wid}
    s, b = await call(router.url + "/v1/chat/completions", body=CHAT, headers=headers)
    assert s == 400 and b["error"]["code"] == "invalid_workflow_id"


async def test_wrong_methods_and_unknown_routes_are_json(router: RouterHandle) -> None:
    s, b = await call(router.url + "/generate", method="GET", headers=auth(KEY_ALL))
    assert s == 405 and is_openai_error(b, s)
    s, b = await call(router.url + "/nothing/here", method="GET")
    assert s == 404 and is_openai_error(b, s)


# -- entitlement and admin ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "header", "model", "status"),
    [
        (KEY_BATCH, "interactive", "sim-llama", 403),  # header asks above the key's entitlement
        (KEY_BATCH, None, "sim-llama@interactive", 403),  # MODEL@TIER alias
        (KEY_BATCH, None, "fast-llama", 403),  # declared alias
        (KEY_BATCH, "batch", "sim-llama", 200),
        (KEY_BATCH, None, "sim-llama@batch", 200),
        (KEY_ALL, "interactive", "sim-llama", 200),
        (None, None, "sim-llama", 401),
        ("sk-not-a-key", None, "sim-llama", 401),
    ],
)
async def test_a_key_selects_only_tiers_it_is_entitled_to(
    router: RouterHandle, key: str | None, header: str | None, model: str, status: int
) -> None:
    headers = auth(key) if key else {}
    if header:
        headers["x-slo-tier"] = header
    s, b = await call(router.url + "/v1/chat/completions", body={**CHAT, "model": model}, headers=headers)
    assert s == status, b
    if status != 200:
        assert is_openai_error(b, s)


@pytest.mark.parametrize("path", ["/admin/backends", "/admin/reload", "/admin/drain", "/admin/unknown"])
async def test_admin_needs_the_token(router: RouterHandle, path: str) -> None:
    method = "GET" if path == "/admin/backends" else "POST"
    for headers in ({}, auth("wrong"), auth(KEY_ALL), {"Authorization": ADMIN}):
        s, b = await call(router.url + path, method=method, headers=headers)
        assert s == 401 and b["error"]["code"] == "invalid_admin_token"
    s, b = await call(router.url + path, method=method, headers=auth(ADMIN))
    assert (
        s == {"/admin/backends": 200, "/admin/reload": 409, "/admin/drain": 200, "/admin/unknown": 404}[path]
    )
    await call(router.url + "/admin/undrain", body={}, headers=auth(ADMIN))


async def test_admin_is_disabled_without_the_variable(
    fleet: SimFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_SLOROUTER_ADMIN", raising=False)
    async with run_router(keyed_config(fleet.urls)) as router:
        s, b = await call(router.url + "/admin/backends", method="GET", headers=auth("anything"))
    assert s == 403 and b["error"]["code"] == "admin_disabled"


async def test_drain_the_router_and_a_backend(router: RouterHandle) -> None:
    url = router.url
    s, _ = await call(url + "/admin/drain", body={}, headers=auth(ADMIN))
    assert s == 200
    s, b = await call(url + "/v1/chat/completions", body=CHAT, headers=auth(KEY_ALL))
    assert s == 503 and b["error"]["code"] == "draining"
    s, b = await call(url + "/health", method="GET")
    assert s == 503 and b == {"status": "draining"}
    s, _ = await call(url + "/metrics", method="GET")
    assert s == 200
    await call(url + "/admin/undrain", body={}, headers=auth(ADMIN))
    s, b = await call(url + "/admin/drain", body={"backend": "e0"}, headers=auth(ADMIN))
    assert s == 200 and b == {"backend": "e0", "drained": True}
    s, b = await call(url + "/v1/chat/completions", body=CHAT, headers=auth(KEY_ALL))
    assert s == 503 and b["error"]["code"] == "no_backend"
    s, b = await call(url + "/admin/backends", method="GET", headers=auth(ADMIN))
    assert b["backends"][0]["health"]["drained"] is True and b["backends"][0]["health"]["routable"] is False
    s, b = await call(url + "/health", method="GET")
    assert s == 503 and b["backend_states"]["e0"]["drained"] is True
    s, b = await call(url + "/admin/undrain", body={"backend": "e0"}, headers=auth(ADMIN))
    s, b = await call(url + "/v1/chat/completions", body=CHAT, headers=auth(KEY_ALL))
    assert s == 200
    s, b = await call(url + "/admin/drain", body={"backend": "nope"}, headers=auth(ADMIN))
    assert s == 404


# -- headers both ways, no open proxy, keys never leave ----------------------------------------


async def test_hop_by_hop_headers_are_stripped_both_ways_and_keys_stay_home(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        capture_server() as (url, seen),
        run_router(keyed_config([url])) as router,
        aiohttp.ClientSession() as s,
        s.post(
            router.url + "/v1/chat/completions",
            json=CHAT,
            headers={
                **auth(KEY_ALL),
                "Connection": "keep-alive, X-Client-Hop",
                "X-Client-Hop": "secret",
                "Keep-Alive": "timeout=9",
                "TE": "trailers",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "X-Api-Key": KEY_ALL,
                "X-End-To-End": "kept",
            },
        ) as r,
    ):
        assert r.status == 200
        got = {k.lower() for k in r.headers}
    up = seen[0]
    for h in ("x-client-hop", "keep-alive", "te", "proxy-authorization", "authorization", "x-api-key"):
        assert h not in up, h
    assert up["x-end-to-end"] == "kept"
    assert KEY_ALL not in " ".join(up.values())
    for h in ("x-hop-secret", "keep-alive", "proxy-authenticate"):
        assert h not in got, h
    assert "x-end-to-end" in got


async def test_no_open_proxy_absolute_form_and_foreign_host(fleet: SimFleet) -> None:
    async with capture_server() as (evil_url, evil_seen), run_router(router_config(fleet.urls)) as router:
        evil = evil_url.removeprefix("http://")
        port = port_of(router)
        body = orjson.dumps(CHAT)
        for target in (f"http://{evil}/v1/chat/completions", "/v1/chat/completions"):
            req = (
                f"POST {target} HTTP/1.1\r\nHost: {evil}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            got, _ = await raw_exchange(port, req)
            assert b" 200 " in got.split(b"\r\n", 1)[0] and b'"chat.completion"' in got
        for target in (f"http://{evil}/v1/models", "/v1/models", f"http://{evil}/v1/anything"):
            req = f"GET {target} HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n".encode()
            got, _ = await raw_exchange(port, req)
            assert got.startswith(b"HTTP/1.1 ")
    assert evil_seen == []  # the router never connected anywhere but its configured backends


async def test_api_keys_are_never_logged(fleet: SimFleet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_router(keyed_config(fleet.urls)) as router:
        for key in (KEY_ALL, KEY_BATCH, KEY_ALL + "x"):
            for hdr in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
                await call(
                    router.url + "/v1/chat/completions",
                    body=CHAT,
                    headers={**hdr, "x-slo-tier": "interactive"},
                )
                await call(router.url + "/v1/chat/completions", data=b"{bad", headers=hdr)
        req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY_ALL.encode()
        req += b"a" * 9000 + b"\r\n\r\n"
        await raw_exchange(port_of(router), req)
    text = caplog.text + " ".join(str(r.args) for r in caplog.records)
    for key in (KEY_ALL, KEY_BATCH):
        assert key not in text
