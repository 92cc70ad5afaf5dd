"""HTTP servers for simulated engines: many engines, one process, one port each.

Programmatic API (for tests and benchmarks)::

    from slorouter.simengine.server import serve_engines

    async with serve_engines(2, profile="cpu-tiny", seed=0) as fleet:
        fleet.urls        # ["http://127.0.0.1:PORT", ...]  (ephemeral ports by default)
        fleet.engines     # [SimEngine, ...]: .model (EngineModel: num_running, kv_usage, ...)
        ...               # talk to the urls with any HTTP/OpenAI client

One engine at a time (for a scaler that starts and stops servers): ``e = await
start_engine(profile, ...)`` (same options, ``port=0``), ``e.url``, ``await e.stop()``.

``serve_engines(count, *, profile=DEFAULT_PROFILE (name, file or StepProfile), engine="vllm"|"tgi",
seed=0, model="sim-llama", host="127.0.0.1", base_port=0 (0 = ephemeral ports, else
consecutive ports from base_port), eos_mean=256, max_model_len=8192, noise=0.0,
record_drift=False, api_key=None, scheduling="fcfs")``. ``scheduling="priority"`` is vLLM's
``--scheduling-policy priority``: a request's ``priority`` field (an integer, lower first;
a non-integer is a 400) orders the waiting queue and picks preemption victims
(:mod:`slorouter.engine.waiting`); with ``fcfs`` a non-zero ``priority`` is refused with a
400, as vLLM refuses it. Every engine has the same seed, so a request gets the
same answer from any of them. With ``api_key`` (vLLM only), every route under ``/v1``
requires ``Authorization: Bearer <api_key>`` and answers ``401 {"error": "Unauthorized"}``
without it, as vLLM's ``--api-key`` does (``/health``, ``/metrics``, ``/version``,
``/tokenize`` stay open).

Routes with ``engine="vllm"`` (vLLM's OpenAI server, see :mod:`slorouter.simengine.wire`):
``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``,
``GET /version``, ``POST /tokenize``, ``POST /detokenize``, ``GET /metrics``. With
``engine="tgi"``: ``POST /generate``, ``POST /generate_stream``, ``POST /`` (``stream`` in
the body), ``POST /v1/chat/completions`` (TGI's flavour), ``GET /info``, ``GET /health``,
``GET /v1/models``, ``GET /metrics``. Token counting rules: :mod:`slorouter.simengine.text`.
Bad bodies get the real server's error shape (vLLM: ``{"error": {"message", "type",
"param", "code"}}`` 400/404; TGI: ``{"error", "error_type"}`` 422). A client disconnect
cancels the handler (``handler_cancellation=True``), which drops the request from the
engine before the next step.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from slorouter.engine.profiles import DEFAULT_PROFILE, load_profile
from slorouter.models.profile import StepProfile
from slorouter.simengine.metrics_text import tgi_metrics, vllm_metrics
from slorouter.simengine.requests import ApiError, GenSpec, Kind, parse_tgi, parse_vllm
from slorouter.simengine.runtime import SimEngine
from slorouter.simengine.text import BOS_ID, TOKEN_RE, detokenize, message_text, text_ids
from slorouter.simengine.wire import TGI_FINGERPRINT

ENGINE_KEY = web.AppKey("sim_engine", SimEngine)
VLLM_VERSION = "0.32.0+slorouter.sim"
SSE_TYPE = "text/event-stream; charset=utf-8"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(e: ApiError, tgi: bool) -> web.Response:
    if tgi:
        return _json({"error": e.message, "error_type": e.type}, e.status)
    return _json(
        {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.status}}, e.status
    )


async def _body(request: web.Request, tgi: bool) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if tgi:
            raise ApiError(422, f"Failed to parse the request body as JSON: {e}", "validation") from None
        raise ApiError(400, f"JSON decode error: {e}", "BadRequestError", "body") from None


async def _generate(request: web.Request, spec: GenSpec) -> web.StreamResponse:
    eng = request.app[ENGINE_KEY]
    if not spec.stream:
        g = eng.submit(spec, None)
        try:
            await g.done
        finally:
            eng.cancel(g)
        return web.Response(body=g.em.body(g.n), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": SSE_TYPE})
    await resp.prepare(request)
    g = eng.submit(spec, request.transport)
    try:
        await g.done
    finally:
        eng.cancel(g)
    with contextlib.suppress(ConnectionError):  # the client left right after the last token
        await resp.write_eof()
    return resp


# ---- vLLM ----------------------------------------------------------------------------------
def _vllm_route(kind: Kind) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        eng = request.app[ENGINE_KEY]
        try:
            spec = parse_vllm(kind, await _body(request, False), eng.limits)
            return await _generate(request, spec)
        except ApiError as e:
            return _error(e, False)

    return handler


async def models(request: web.Request) -> web.Response:
    eng = request.app[ENGINE_KEY]
    lim = eng.limits
    created = 1_750_000_000
    if eng.engine == "tgi":
        card: dict[str, Any] = {"id": lim.model, "object": "model", "created": created, "owned_by": lim.model}
        return _json({"object": "list", "data": [card]})
    perm = {"id": "modelperm-0000000000000000", "object": "model_permission", "created": created}
    perm.update({"allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True})
    perm.update({"allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False})
    perm.update({"organization": "*", "group": None, "is_blocking": False})
    card = {"id": lim.model, "object": "model", "created": created, "owned_by": "vllm", "root": lim.model}
    card.update({"parent": None, "max_model_len": lim.max_model_len, "permission": [perm]})
    return _json({"object": "list", "data": [card]})


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    return _json({"version": VLLM_VERSION})


async def tokenize(request: web.Request) -> web.Response:
    eng = request.app[ENGINE_KEY]
    try:
        body = await _body(request, False)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", param="body")
        if "messages" in body:
            msgs = body["messages"]
            if not isinstance(msgs, list):
                raise ApiError(400, "messages: must be a list", param="messages")
            ids = [BOS_ID]
            for i, m in enumerate(msgs):
                text = message_text(m.get("content")) if isinstance(m, dict) else None
                if text is None:
                    raise ApiError(
                        400, f"messages[{i}]: must be an object with string content", param="messages"
                    )
                ids += [5, 6, 7, 8, *text_ids(text)]
            ids += [3, 4]
        elif isinstance(body.get("prompt"), str):
            ids = ([BOS_ID] if body.get("add_special_tokens", True) else []) + text_ids(body["prompt"])
        else:
            raise ApiError(400, "prompt: field required (a string), or messages", param="prompt")
    except ApiError as e:
        return _error(e, False)
    return _json(
        {"count": len(ids), "max_model_len": eng.limits.max_model_len, "tokens": ids, "token_strs": None}
    )


async def detokenize_route(request: web.Request) -> web.Response:
    try:
        body = await _body(request, False)
        toks = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(toks, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in toks
        ):
            raise ApiError(400, "tokens: field required (a list of token ids)", param="tokens")
    except ApiError as e:
        return _error(e, False)
    return _json({"prompt": detokenize(toks)})


async def metrics(request: web.Request) -> web.Response:
    eng = request.app[ENGINE_KEY]
    text = tgi_metrics(eng) if eng.engine == "tgi" else vllm_metrics(eng)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


# ---- TGI -----------------------------------------------------------------------------------
def _tgi_route(kind: Kind, stream: bool | None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        eng = request.app[ENGINE_KEY]
        try:
            body = await _body(request, True)
            s = stream if stream is not None else isinstance(body, dict) and body.get("stream") is True
            spec = parse_tgi(kind, body, eng.limits, stream=s)
            return await _generate(request, spec)
        except ApiError as e:
            return _error(e, True)

    return handler


async def tgi_info(request: web.Request) -> web.Response:
    lim = request.app[ENGINE_KEY].limits
    info: dict[str, Any] = {"model_id": lim.model, "model_sha": None, "model_pipeline_tag": "text-generation"}
    info.update({"max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4})
    info.update({"max_input_tokens": lim.max_model_len - 1, "max_total_tokens": lim.max_model_len})
    info.update({"validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router"})
    info.update({"version": TGI_FINGERPRINT.split("-")[0], "sha": None, "docker_label": None})
    return _json(info)


async def tgi_tokenize(request: web.Request) -> web.Response:
    try:
        body = await _body(request, True)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, str):
            raise ApiError(422, "Input validation error: `inputs` cannot be empty", "validation")
    except ApiError as e:
        return _error(e, True)
    out, pos = [], 0
    for tid, tok in zip(text_ids(inputs), _words(inputs), strict=True):
        start = inputs.index(tok, pos)
        pos = start + len(tok)
        out.append({"id": tid, "text": tok, "start": start, "stop": pos})
    return _json(out)


def _words(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


@web.middleware
async def _not_found_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """FastAPI-style JSON for unknown routes and methods, as vLLM answers them."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _json({"detail": "Not Found"}, 404)
    except web.HTTPMethodNotAllowed:
        return _json({"detail": "Method Not Allowed"}, 405)


def _require_key(api_key: str) -> Middleware:
    """vLLM's ``--api-key``: a bearer token on every route under ``/v1`` (any method but
    OPTIONS), compared in constant time; else ``401 {"error": "Unauthorized"}``."""
    want = hashlib.sha256(api_key.encode()).digest()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" and request.path.startswith("/v1"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            given = hashlib.sha256(token.encode()).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, want):
                return _json({"error": "Unauthorized"}, 401)
        return await handler(request)

    return check


def build_app(eng: SimEngine, api_key: str | None = None) -> web.Application:
    guard = [_require_key(api_key)] if api_key else []
    app = web.Application(middlewares=[*guard, _not_found_json], client_max_size=64 * 1024 * 1024)
    app[ENGINE_KEY] = eng
    r = app.router
    r.add_get("/health", health)
    r.add_get("/metrics", metrics)
    r.add_get("/v1/models", models)
    if eng.engine == "tgi":
        r.add_post("/generate", _tgi_route(Kind.TGI_GENERATE, False))
        r.add_post("/generate_stream", _tgi_route(Kind.TGI_GENERATE, True))
        r.add_post("/", _tgi_route(Kind.TGI_GENERATE, None))
        r.add_post("/v1/chat/completions", _tgi_route(Kind.TGI_CHAT, None))
        r.add_get("/info", tgi_info)
        r.add_post("/tokenize", tgi_tokenize)
    else:
        r.add_post("/v1/chat/completions", _vllm_route(Kind.CHAT))
        r.add_post("/v1/completions", _vllm_route(Kind.COMPLETION))
        r.add_get("/version", version)
        r.add_post("/tokenize", tokenize)
        r.add_post("/detokenize", detokenize_route)
    return app


@dataclass
class SimFleet:
    urls: list[str]
    engines: list[SimEngine]
    ports: list[int]


@dataclass
class ServedEngine:
    """One simulated engine served on its own port (:func:`start_engine`)."""

    url: str
    port: int
    engine: SimEngine
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.engine.stop()
        await self.runner.cleanup()


def _check_engine(engine: str, api_key: str | None) -> None:
    if engine not in ("vllm", "tgi"):
        raise ValueError(f"engine must be 'vllm' or 'tgi', got {engine!r}")
    if api_key is not None and (engine != "vllm" or not api_key):
        raise ValueError("api_key: a non-empty key, with engine 'vllm' only")


async def start_engine(
    profile: str | StepProfile = DEFAULT_PROFILE,
    *,
    engine: str = "vllm",
    seed: int = 0,
    model: str = "sim-llama",
    host: str = "127.0.0.1",
    port: int = 0,
    eos_mean: float = 256.0,
    max_model_len: int = 8192,
    noise: float = 0.0,
    record_drift: bool = False,
    api_key: str | None = None,
    scheduling: str = "fcfs",
) -> ServedEngine:
    """Start one simulated engine (``port`` 0: an ephemeral port); ``stop()`` it when done."""
    _check_engine(engine, api_key)
    prof = load_profile(profile) if isinstance(profile, str) else profile
    eng = SimEngine(
        prof,
        model_name=model,
        seed=seed,
        engine=engine,
        eos_mean=eos_mean,
        max_model_len=max_model_len,
        noise=noise,
        record_drift=record_drift,
        scheduling=scheduling,
    )
    runner = web.AppRunner(build_app(eng, api_key), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])
    eng.start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return ServedEngine(f"http://{shown}:{bound}", bound, eng, runner)


@asynccontextmanager
async def serve_engines(
    count: int = 1,
    *,
    profile: str | StepProfile = DEFAULT_PROFILE,
    engine: str = "vllm",
    seed: int = 0,
    model: str = "sim-llama",
    host: str = "127.0.0.1",
    base_port: int = 0,
    eos_mean: float = 256.0,
    max_model_len: int = 8192,
    noise: float = 0.0,
    record_drift: bool = False,
    api_key: str | None = None,
    scheduling: str = "fcfs",
) -> AsyncIterator[SimFleet]:
    """Start ``count`` simulated engines (see the module docstring); stop them on exit."""
    _check_engine(engine, api_key)
    prof = load_profile(profile) if isinstance(profile, str) else profile
    served: list[ServedEngine] = []
    try:
        for i in range(count):
            served.append(
                await start_engine(
                    prof,
                    engine=engine,
                    seed=seed,
                    model=model,
                    host=host,
                    port=base_port + i if base_port else 0,
                    eos_mean=eos_mean,
                    max_model_len=max_model_len,
                    noise=noise,
                    record_drift=record_drift,
                    api_key=api_key,
                    scheduling=scheduling,
                )
            )
        yield SimFleet([e.url for e in served], [e.engine for e in served], [e.port for e in served])
    finally:
        for e in served:
            await e.engine.stop()
        for e in served:
            await e.runner.cleanup()
