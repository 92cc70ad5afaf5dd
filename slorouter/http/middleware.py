"""Every error the router itself produces is an OpenAI-style JSON error, including
aiohttp's own (404 unknown route, 405, 413 body too large)."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from slorouter.proxy.errors import error_response

log = logging.getLogger("slorouter.http")


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(413, f"request body too large ({e.text or 'over the limit'})", "body_too_large")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(e.status, e.reason or "error", None, headers=headers)
    except (ConnectionError, TimeoutError) as e:  # client went away / read timed out
        log.debug("client connection ended: %s", e)
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal router error", "internal_error")
