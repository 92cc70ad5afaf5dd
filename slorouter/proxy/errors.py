"""OpenAI-style error bodies: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_body(status: int, message: str, code: str | None = None, type_: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": type_ or _TYPES.get(status, "api_error"),
                "code": code or status,
            }
        }
    )


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, code),
        content_type="application/json",
        headers=headers,
    )


def sse_error_event(message: str, code: str = "upstream_error") -> bytes:
    """A well-formed SSE event telling a streaming client the stream broke."""
    return b"data: " + error_body(502, message, code) + b"\n\ndata: [DONE]\n\n"
