"""TGI's native routes, /generate and /generate_stream, for backends declared
``engine: tgi``. Bodies go upstream unchanged; tokens are counted per SSE event."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from slorouter.config.entitlement import Refusal
from slorouter.http.context import SERVICES
from slorouter.http.requests import BadRequest, classify, read_json, serve_generation
from slorouter.proxy.engines import prepare_tgi
from slorouter.proxy.errors import error_response
from slorouter.values import Engine

_TGI = frozenset({Engine.TGI})


def _check(body: dict[str, Any]) -> tuple[int, int | None]:
    inputs = body.get("inputs")
    if not isinstance(inputs, str) or not inputs:
        raise BadRequest(400, "'inputs' must be a non-empty string", "invalid_value")
    params = body.get("parameters")
    max_new: int | None = None
    if params is not None:
        if not isinstance(params, dict):
            raise BadRequest(400, "'parameters' must be an object", "invalid_value")
        v = params.get("max_new_tokens")
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BadRequest(400, "'parameters.max_new_tokens' must be an integer >= 1", "invalid_value")
            max_new = v
    return max(1, len(inputs) // 4 + 1), max_new


async def _tgi(request: web.Request, path: str, stream: bool) -> web.StreamResponse:
    svc = request.app[SERVICES]
    arrival = svc.clock.now()
    try:
        raw, parsed = await read_json(request, svc.cfg.server.client_read_timeout_s)
        prompt_tokens, max_new = _check(parsed)
    except BadRequest as e:
        return e.response()
    got = classify(svc, request, arrival, None, prompt_tokens, max_new, stream)
    if isinstance(got, Refusal):
        return error_response(got.status, got.message, got.code)
    info, _ = got
    return await serve_generation(
        request, info, path, lambda b: prepare_tgi(raw, parsed, stream), engines=_TGI
    )


async def generate(request: web.Request) -> web.StreamResponse:
    return await _tgi(request, "/generate", stream=False)


async def generate_stream(request: web.Request) -> web.StreamResponse:
    return await _tgi(request, "/generate_stream", stream=True)
