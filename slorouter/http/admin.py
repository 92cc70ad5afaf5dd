"""Admin endpoints, behind a bearer token read from the environment variable named by
``admin.token_env`` (``SLOROUTER_ADMIN_TOKEN`` by default). Every ``/admin/...`` path —
known or not — answers 401 without the right token (403 ``admin_disabled`` while the
variable is unset or empty), so nothing about them can be learned without it.

=====================  =========================================================================
``GET /admin/backends``  every backend: url, engine, tier, health (probes, circuit, drain), load
``POST /admin/reload``   re-read the config file (as SIGHUP does): 200 with what changed, or 400
                         with every error (the running config stays); 409 without a config file
``POST /admin/drain``    ``{"backend": ID}``: no new requests to it (in-flight ones finish);
                         ``{}``: the whole router drains (new requests 503, ``/health`` 503)
``POST /admin/undrain``  the reverse
``POST /admin/save-state``  write the learned models to ``models.state_file`` now
=====================  =========================================================================

The composition root (:mod:`slorouter.app`) provides the operations as a :class:`Control`
stored under :data:`CONTROL`; this module only speaks HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from slorouter.config.entitlement import bearer, check_admin
from slorouter.http.context import SERVICES
from slorouter.proxy.errors import error_response
from slorouter.proxy.health import HealthMonitor


@dataclass(frozen=True, slots=True)
class ReloadReport:
    ok: bool
    errors: tuple[str, ...] = ()  # FILE: PATH: MESSAGE lines (nothing changed)
    changes: tuple[str, ...] = ()  # what the new config changed
    warnings: tuple[str, ...] = ()  # changes that take effect only after a restart

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": list(self.errors),
            "changes": list(self.changes),
            "warnings": list(self.warnings),
        }


@dataclass(eq=False)
class Control:
    """Operations the admin endpoints (and SIGHUP) trigger; built by the composition root."""

    monitor: HealthMonitor
    reload: Callable[[], ReloadReport] | None = None  # None: not started from a config file
    save_state: Callable[[], str | None] | None = None  # returns the file written, None if none
    draining: bool = False
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})


CONTROL: web.AppKey[Control] = web.AppKey("slorouter_control", Control)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


def authorize(request: web.Request) -> web.Response | None:
    """None when the request carries the admin token; else the error to answer."""
    refusal = check_admin(request.app[SERVICES].cfg, bearer(request.headers.get("Authorization")))
    if refusal is None:
        return None
    return error_response(refusal.status, refusal.message, refusal.code)


async def backends(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    ctl = request.app[CONTROL]
    states = ctl.monitor.describe()
    rows = []
    sync = svc.syncer.sync if svc.syncer is not None else None
    for b in svc.tracker.backends.backends:
        load = svc.tracker.loads.get(b.id)
        row: dict[str, Any] = {}
        if sync is not None:  # placed by this process (inflight: by every process sharing the view)
            row["own_requests"] = sync.own_running(b.id)
        rows.append(
            {
                "id": b.id,
                "url": b.url,
                "engine": b.engine.value,
                "tier": b.tier,
                "health": states.get(b.id),
                "inflight": {
                    "requests": load.running if load else 0,
                    "prompt_tokens": load.prompt_tokens if load else 0,
                    "output_tokens": load.output_tokens if load else 0,
                    **row,
                },
            }
        )
    return _json({"draining": ctl.draining, "worker": svc.worker, "backends": rows})


async def reload(request: web.Request) -> web.Response:
    ctl = request.app[CONTROL]
    if ctl.reload is None:
        return error_response(409, "the router was not started from a config file", "no_config_file")
    report = ctl.reload()
    return _json(report.as_dict(), 200 if report.ok else 400)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error_response(400, "the body must be a JSON object", "invalid_json")
    if not isinstance(body, dict):
        return error_response(400, "the body must be a JSON object", "invalid_json")
    return body


async def _set_drain(request: web.Request, drained: bool) -> web.Response:
    ctl = request.app[CONTROL]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    bid = body.get("backend")
    if bid is None:
        ctl.draining = drained
        return _json({"router": "draining" if drained else "serving"})
    if not isinstance(bid, str) or not ctl.monitor.drain(bid, drained):
        return error_response(404, f"no backend {bid!r}", "unknown_backend")
    return _json({"backend": bid, "drained": drained})


async def drain(request: web.Request) -> web.Response:
    return await _set_drain(request, True)


async def undrain(request: web.Request) -> web.Response:
    return await _set_drain(request, False)


async def save_state(request: web.Request) -> web.Response:
    ctl = request.app[CONTROL]
    path = ctl.save_state() if ctl.save_state is not None else None
    if path is None:
        return error_response(409, "models.state_file is not set", "no_state_file")
    return _json({"saved": path})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/backends", backends)
    r.add_post("/admin/reload", reload)
    r.add_post("/admin/drain", drain)
    r.add_post("/admin/undrain", undrain)
    r.add_post("/admin/save-state", save_state)
