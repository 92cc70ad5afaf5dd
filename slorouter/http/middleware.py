"""The router's front door, one middleware for every route:

* **slow clients**: a request body must arrive within ``server.client_read_timeout_s``
  (else 408); a body over ``server.max_body_bytes`` gets 413. The body is read here,
  once, so every handler finds it complete. (Slow *headers* are cut by the server's
  keep-alive timer, set to the same limit in :func:`slorouter.app.runner_for`.)
* **admin**: every ``/admin/...`` path needs the admin bearer token (401/403 before
  the route is even looked at);
* **draining**: while the router drains, new work gets 503 with ``Retry-After`` and
  ``/health`` answers 503 ``draining``; ``/metrics`` and admin routes still work;
* **errors**: everything the router answers itself is an OpenAI-style JSON error,
  including aiohttp's own (404 unknown route, 405, 413); an unexpected exception is
  logged (method and path only: never headers, so never a key) and answered 500.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from slorouter.http.admin import CONTROL, authorize
from slorouter.http.context import SERVICES
from slorouter.proxy.errors import error_response

log = logging.getLogger("slorouter.http")

_ALWAYS_OPEN = ("/metrics", "/admin/")


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        path = request.path
        if path.startswith("/admin/"):
            refused = authorize(request)
            if refused is not None:
                return refused
        else:
            ctl = request.app.get(CONTROL)
            if ctl is not None and ctl.draining and not path.startswith(_ALWAYS_OPEN):
                if path == "/health":
                    body = orjson.dumps({"status": "draining"})
                    return web.Response(status=503, body=body, content_type="application/json")
                return error_response(
                    503,
                    "the router is draining; retry on another instance",
                    "draining",
                    headers={"Retry-After": "1"},
                )
        if request.body_exists:
            timeout_s = request.app[SERVICES].cfg.server.client_read_timeout_s
            try:
                if request.content.is_eof():  # all of it arrived already: no wait, no timer
                    await request.read()
                else:
                    async with asyncio.timeout(timeout_s):
                        await request.read()
            except TimeoutError:
                resp = error_response(
                    408, f"the request body did not arrive within {timeout_s:g} s", "timeout"
                )
                resp.force_close()  # the rest of the body will not be waited for
                return resp
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as e:
        resp = error_response(413, f"request body too large ({e.text or 'over the limit'})", "body_too_large")
        resp.force_close()  # the rest of the body is not read
        return resp
    except HttpProcessingError as e:  # a malformed request (framing)
        return error_response(400, f"malformed request: {e.message}", "invalid_request")
    except web.RequestPayloadError as e:  # a body that cannot be decoded (Content-Encoding)
        resp = error_response(400, f"malformed request body: {e}", "invalid_request")
        resp.force_close()
        return resp
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
