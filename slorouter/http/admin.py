"""Admin endpoints, behind a bearer token read from the environment variable named by
``admin.token_env`` (``SLOROUTER_ADMIN_TOKEN`` by default). Every ``/admin/...`` path —
known or not — answers 401 without the right token (403 ``admin_disabled`` while the
variable is unset or empty), so nothing about them can be learned without it.

=============================  =================================================================
``GET /admin/backends``          every backend: url, engine, tier, health (probes, circuit, drain),
                                 load, whether it is being removed; ``removed``: those taken out
                                 (removable: the server may be stopped)
``POST /admin/backends``         register a backend ``{"name", "url", "tier", "engine"?, "models"?,
                                 "api_key_env"?}``
                                 (the fields of a config ``backends[]`` entry): 201 created, 200
                                 when the same one is registered already, 400 with every error,
                                 409 when its name or URL is taken
``DELETE /admin/backends/{id}``  remove it: drained (no new requests, in-flight ones finish), then
                                 out of the set: 200 ``removed`` (``removable: true``), or 202
                                 ``draining``; ``?wait_s=S`` (≤ 600) waits for the drain first
``GET /admin/autoscale``         the scaler per tier (current, desired, need, rate, cost, headroom,
                                 queue, attainment) and its last decisions
``POST /admin/reload``           re-read the config file (as SIGHUP does): 200 with what changed, or
                                 400 with every error (the running config stays); 409 without a
                                 config file
``POST /admin/drain``            ``{"backend": ID}``: no new requests to it (in-flight ones finish);
                                 ``{}``: the whole router drains (new requests 503, ``/health`` 503)
``POST /admin/undrain``          the reverse
``POST /admin/save-state``       write the learned models to ``models.state_file`` now
=============================  =================================================================

Registered and removed backends go through the same path as a config reload (the backend
set is rebuilt and swapped, :mod:`slorouter.actuation.fleet`); they are not written to the
config file (a registrar registers again after a router restart).

The composition root (:mod:`slorouter.app`) provides the operations as a :class:`Control`
stored under :data:`CONTROL`; this module only speaks HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from slorouter.actuation.fleet import FleetManager
from slorouter.actuation.scaling import ScaleRunner
from slorouter.config.checks import check_url
from slorouter.config.entitlement import bearer, check_admin
from slorouter.config.fields import Errors, convert_section
from slorouter.config.model import BackendConfig
from slorouter.http.context import SERVICES
from slorouter.proxy.errors import error_response
from slorouter.proxy.health import HealthMonitor
from slorouter.state.backends import Backend


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
    fleet: FleetManager | None = None  # run-time fleet changes (register, remove, moves)
    scaling: ScaleRunner | None = None  # the scaler, when autoscale.enabled
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
    leaving = ctl.fleet.leaving() if ctl.fleet is not None else frozenset()
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
                "removing": b.id in leaving,
            }
        )
    removed = ctl.fleet.describe_removed() if ctl.fleet is not None else []
    return _json({"draining": ctl.draining, "worker": svc.worker, "backends": rows, "removed": removed})


async def register_backend(request: web.Request) -> web.Response:
    ctl = request.app[CONTROL]
    assert ctl.fleet is not None
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    errs: Errors = []
    if "name" not in body:
        errs.append(("name", "required: the backend's unique id"))
    spec = convert_section(BackendConfig, body, "", errs)
    url = body.get("url")
    if isinstance(url, str):
        check_url(url, "url", errs)
    key = None
    if isinstance(spec, BackendConfig) and spec.api_key_env is not None:
        key = os.environ.get(spec.api_key_env, "")
        if not key:
            errs.append(("api_key_env", f"environment variable {spec.api_key_env} is not set (or empty)"))
    if errs or not isinstance(spec, BackendConfig):
        msg = "; ".join(f"{p}: {m}" for p, m in errs)
        return error_response(400, f"invalid backend: {msg}", "invalid_backend")
    b = Backend(
        id=spec.name,
        url=spec.url.rstrip("/"),
        engine=spec.engine,
        tier=spec.tier or request.app[SERVICES].cfg.routing.default_tier,
        models=tuple(spec.models),
        api_key=key,
    )
    try:
        got = ctl.fleet.register(b, spec.api_key_env)
    except ValueError as e:
        status = 400 if str(e).startswith("unknown tier") else 409
        return error_response(status, str(e), "invalid_backend" if status == 400 else "backend_conflict")
    row = {"id": b.id, "url": b.url, "engine": b.engine.value, "tier": b.tier, "models": list(b.models)}
    return _json({"backend": row, "status": got}, 201 if got == "created" else 200)


async def remove_backend(request: web.Request) -> web.Response:
    ctl = request.app[CONTROL]
    assert ctl.fleet is not None
    bid = request.match_info["backend"]
    raw = request.query.get("wait_s", "0")
    try:
        wait_s = float(raw)
    except ValueError:
        wait_s = -1.0
    if not 0.0 <= wait_s <= 600.0:
        return error_response(
            400, f"wait_s must be a number of seconds from 0 to 600, got {raw!r}", "invalid_wait"
        )
    state = ctl.fleet.remove(bid, "admin")
    if state is None:
        return error_response(404, f"no backend {bid!r}", "unknown_backend")
    if state == "draining" and wait_s > 0:
        state = "removed" if await ctl.fleet.wait_removed(bid, wait_s) is not None else "draining"
    if state == "removed":
        return _json({"backend": bid, "state": "removed", "removable": True})
    load = request.app[SERVICES].tracker.loads.get(bid)
    inflight = load.running if load is not None else 0
    return _json({"backend": bid, "state": "draining", "removable": False, "inflight": inflight}, 202)


async def autoscale(request: web.Request) -> web.Response:
    sc = request.app[CONTROL].scaling
    if sc is None:
        return _json({"enabled": False})
    return _json({"enabled": True, **sc.describe()})


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
    r.add_post("/admin/backends", register_backend)
    r.add_delete("/admin/backends/{backend}", remove_backend)
    r.add_get("/admin/autoscale", autoscale)
    r.add_post("/admin/reload", reload)
    r.add_post("/admin/drain", drain)
    r.add_post("/admin/undrain", undrain)
    r.add_post("/admin/save-state", save_state)
