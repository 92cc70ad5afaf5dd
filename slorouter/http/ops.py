"""Operational routes: /v1/models (union over backends), /health, and the
pass-through of every other /v1/ route and vLLM's /tokenize, /detokenize to one
healthy backend (never to a URL taken from the request)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from slorouter.http.admin import CONTROL
from slorouter.http.context import SERVICES
from slorouter.proxy.errors import error_response
from slorouter.proxy.upstream import auth_headers, downstream_headers, upstream_headers
from slorouter.state.backends import Backend

_MODELS_TIMEOUT = aiohttp.ClientTimeout(total=3.0)


async def _models_of(session: aiohttp.ClientSession, b: Backend) -> list[dict[str, Any]]:
    try:
        async with session.get(b.url + "/v1/models", headers=auth_headers(b), timeout=_MODELS_TIMEOUT) as r:
            if r.status != 200:
                return []
            data = orjson.loads(await r.read())
    except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError):
        return []
    items = data.get("data") if isinstance(data, dict) else None
    return (
        [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if isinstance(items, list)
        else []
    )


async def models(request: web.Request) -> web.Response:
    """Union of the healthy backends' models (configured names for backends that list
    theirs in the config), plus the ``MODEL@TIER`` aliases a client may use."""
    svc = request.app[SERVICES]
    pool = svc.tracker.eligible(None)
    seen: dict[str, dict[str, Any]] = {}
    fetched = await asyncio.gather(*(_models_of(svc.session, b) for b in pool if not b.models))
    for items in fetched:
        for m in items:
            seen.setdefault(m["id"], m)
    for b in pool:
        for name in b.models:
            seen.setdefault(name, {"id": name, "object": "model", "owned_by": "slorouter"})
    for alias, a in svc.cfg.routing.aliases.items():
        seen.setdefault(alias, {"id": alias, "object": "model", "owned_by": "slorouter", "root": a.model})
    return web.Response(
        body=orjson.dumps({"object": "list", "data": list(seen.values())}), content_type="application/json"
    )


async def health(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    healthy = len(svc.tracker.eligible(None))
    body: dict[str, Any] = {
        "status": "ok" if healthy else "unavailable",
        "healthy_backends": healthy,
        "backends": len(svc.tracker.backends),
    }
    if svc.worker is not None:
        body["worker"] = svc.worker
    if svc.syncer is not None:  # the shared load picture: other processes seen, how stale
        sy = svc.syncer
        body["sync"] = {
            "holder": sy.sync.holder,
            "store_up": sy.up,
            "leader": sy.leader,
            "peers": sy.peers,
            "age_s": round(sy.age_s, 3),
        }
    ctl = request.app.get(CONTROL)
    if ctl is not None:  # per backend: routable, probes up/down, circuit closed/open/half_open, drained
        body["backend_states"] = {
            bid: {k: st[k] for k in ("routable", "probe", "circuit", "drained")}
            for bid, st in ctl.monitor.describe().items()
        }
    return web.Response(
        status=200 if healthy else 503, body=orjson.dumps(body), content_type="application/json"
    )


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Forward any other route to one healthy backend, bytes unchanged both ways."""
    svc = request.app[SERVICES]
    pool = svc.tracker.eligible(None)
    if not pool:
        return error_response(503, "no healthy backend", "no_backend")
    svc.passthrough_cursor = (svc.passthrough_cursor + 1) % len(pool)
    backend = pool[svc.passthrough_cursor]
    body = await request.read()
    headers = upstream_headers(request.headers.items(), backend.api_key)
    to = svc.cfg.timeouts
    url = backend.url + request.rel_url.raw_path_qs
    try:
        up = await svc.session.request(
            request.method,
            url,
            data=body or None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=to.connect_s, sock_read=to.first_byte_s),
        )
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        return error_response(502, f"backend {backend.id}: {type(e).__name__}", "upstream_error")
    resp = web.StreamResponse(status=up.status, headers=downstream_headers(up.headers.items()))
    ok = False
    try:
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        ok = True
    except (aiohttp.ClientError, TimeoutError, ConnectionError):
        pass
    finally:
        if ok:
            up.release()
        else:
            up.close()
    return resp
