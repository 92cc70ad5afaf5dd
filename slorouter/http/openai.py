"""OpenAI-compatible generation routes: /v1/chat/completions and /v1/completions."""

from __future__ import annotations

from aiohttp import web

from slorouter.config.entitlement import Refusal
from slorouter.http.context import SERVICES
from slorouter.http.requests import BadRequest, check_openai, classify, read_json, serve_generation
from slorouter.proxy.engines import prepare_openai
from slorouter.proxy.errors import error_response


async def _generation(request: web.Request, path: str, chat: bool) -> web.StreamResponse:
    svc = request.app[SERVICES]
    arrival = svc.clock.now()
    try:
        raw, parsed = await read_json(request, svc.cfg.server.client_read_timeout_s)
        prompt_tokens, max_tokens, stream = check_openai(parsed, chat)
    except BadRequest as e:
        return e.response()
    asked = parsed.get("model")
    got = classify(
        svc, request, arrival, asked if isinstance(asked, str) else None, prompt_tokens, max_tokens, stream
    )
    if isinstance(got, Refusal):
        return error_response(got.status, got.message, got.code)
    info, upstream_model = got
    rewrite = upstream_model if isinstance(asked, str) and upstream_model != asked else None

    return await serve_generation(
        request, info, path, lambda b: prepare_openai(raw, parsed, b.engine, rewrite)
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generation(request, "/v1/chat/completions", chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generation(request, "/v1/completions", chat=False)
