"""The composition root: builds every part from a RouterConfig and wires them into
an aiohttp application. Nothing else constructs long-lived objects.

Background work (the upstream session, health probes, model persistence) lives in
``cleanup_ctx`` so it starts and stops with the app. :func:`apply_config` is the one
place a reloaded config reaches the running parts (see :func:`reload_config`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy

from slorouter.actuation.fleet import FleetManager
from slorouter.actuation.scaling import DeferWatch, ScaleRunner
from slorouter.actuation.webhook import WebhookSender
from slorouter.autoscale.scaler import Scaler
from slorouter.clock import Clock, RealClock
from slorouter.config import ConfigError, format_error, load_config
from slorouter.config.model import RouterConfig, ScaleMode
from slorouter.http import admin, openai, ops, tgi
from slorouter.http.admin import CONTROL, Control, ReloadReport
from slorouter.http.context import SERVICES, Services
from slorouter.http.middleware import openai_errors
from slorouter.metrics.autoscale import autoscale_families, text_lines
from slorouter.metrics.prometheus import RouterMetrics
from slorouter.models import persist
from slorouter.models.latency import OnlineLatency, build_latency
from slorouter.models.lengths import LengthSettings, OnlineLengths
from slorouter.models.profile import StepProfile
from slorouter.policy import registry
from slorouter.policy.base import ParamError, Policy, PolicyContext
from slorouter.proxy.dispatcher import Dispatcher
from slorouter.proxy.forward import Forwarder
from slorouter.proxy.health import HealthMonitor
from slorouter.proxy.upstream import Timeouts, UpstreamSettings, make_session
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.membership import Membership
from slorouter.state.tracker import Tracker

log = logging.getLogger("slorouter")


def configured_backends(cfg: RouterConfig) -> list[Backend]:
    return [
        Backend(id=b.name, url=b.url.rstrip("/"), engine=b.engine, tier=b.tier, models=tuple(b.models))
        for b in cfg.backends
    ]


def backend_set(cfg: RouterConfig) -> BackendSet:
    return BackendSet(configured_backends(cfg), cfg.tier_values)


def upstream_settings(cfg: RouterConfig) -> UpstreamSettings:
    def conv(name: str) -> Timeouts:
        t = cfg.timeouts_for(name)
        return Timeouts(connect_s=t.connect_s, first_byte_s=t.first_byte_s, idle_s=t.idle_s)

    return UpstreamSettings(
        default=Timeouts(cfg.timeouts.connect_s, cfg.timeouts.first_byte_s, cfg.timeouts.idle_s),
        per_tier={t.name: conv(t.name) for t in cfg.tiers},
        max_attempts=cfg.retries.max_attempts,
        backoff_s=cfg.retries.backoff_s,
        backoff_max_s=cfg.retries.backoff_max_s,
    )


def build_models(cfg: RouterConfig, clock: Clock) -> tuple[OnlineLatency, OnlineLengths]:
    """The online latency model (seeded from the configured profile, else engine
    defaults marked as such) and the output-length model."""
    m = cfg.models
    profile = StepProfile.load(m.profile) if m.profile else None
    latency = build_latency(clock, quantile=m.latency_quantile, profile=profile)
    lengths = OnlineLengths(
        clock, LengthSettings(quantile=m.length_quantile, default_tokens=m.default_output_tokens)
    )
    return latency, lengths


def build_policy(cfg: RouterConfig, clock: Clock) -> Policy:
    ctx = PolicyContext(clock, seed=cfg.policy.seed, autoscaling=cfg.autoscale.enabled)
    return registry.build(cfg.policy.kind, cfg.policy.params, ctx)


def build_scaling(
    cfg: RouterConfig, fleet: FleetManager, tracker: Tracker, clock: Clock
) -> ScaleRunner | None:
    """The scaler and its runner when ``autoscale.enabled`` (the webhook sender with
    ``mode: webhook``; the config check made sure its secret is set)."""
    auto = cfg.autoscale
    if not auto.enabled:
        return None
    scaler = Scaler(
        auto,
        cfg.tier_values,
        default_output_tokens=cfg.models.default_output_tokens,
        id_prefix=uuid.uuid4().hex[:12],
        start=clock.now(),
    )
    tracker.add_listener(scaler.observe_outcome)
    sender = None
    if auto.mode is ScaleMode.WEBHOOK:
        secret = os.environ.get(auto.webhook.secret_env, "")
        if not secret:
            raise ConfigError(
                cfg.source,
                [
                    (
                        "autoscale.webhook.secret_env",
                        f"environment variable {auto.webhook.secret_env} is not set",
                    )
                ],
            )
        sender = WebhookSender(auto.webhook, secret.encode(), seed=cfg.policy.seed)
    return ScaleRunner(scaler, auto, fleet, tracker, clock, sender)


def watched(policy: Policy, scaling: ScaleRunner | None) -> Policy:
    """The policy, reporting on-time deferrals to the scaler when one runs."""
    return policy if scaling is None else DeferWatch(policy, scaling.scaler)


def state_path(cfg: RouterConfig) -> Path | None:
    """``models.state_file``, relative to the config file's directory."""
    f = cfg.models.state_file
    if f is None:
        return None
    p = Path(f)
    if not p.is_absolute() and cfg.source and Path(cfg.source).is_file():
        p = Path(cfg.source).parent / p
    return p.resolve()


def _load_state(path: Path, latency: OnlineLatency, lengths: OnlineLengths, clock: Clock) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.info("no saved model state at %s yet: starting from the priors", path)
        return
    except OSError as e:
        log.warning("cannot read the model state %s (%s): starting from the priors", path, e)
        return
    try:
        got = persist.restore(data, latency, lengths, clock.now())
    except persist.StateError as e:
        log.warning("ignoring the model state %s (%s): starting from the priors", path, e)
        return
    log.info(
        "warm start from %s: latency of %d backends (%d observations), %d length digests",
        path,
        got["backends"],
        got["observations"],
        got["length_digests"],
    )


def _save_state(path: Path, latency: OnlineLatency, lengths: OnlineLengths, clock: Clock) -> None:
    """Atomic write (temp file + rename): a crash never leaves a torn state file."""
    data = persist.snapshot(latency, lengths, clock.now(), time.time())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_app(
    cfg: RouterConfig,
    *,
    clock: Clock | None = None,
    adjust: Callable[[RouterConfig], RouterConfig] | None = None,
) -> web.Application:
    """The router. ``cfg.source`` names the config file that ``/admin/reload`` and SIGHUP
    re-read (a config built in memory cannot be reloaded); ``adjust`` is applied to every
    re-read config (``slorouter serve`` uses it to keep its --host/--port)."""
    clock = clock or RealClock()
    membership = Membership(configured_backends(cfg), cfg.tier_values)
    backends = membership.build()
    health = Health(b.id for b in backends.backends)
    latency, lengths = build_models(cfg, clock)
    saved = state_path(cfg)
    if saved is not None:
        _load_state(saved, latency, lengths, clock)
    tracker = Tracker(clock, backends, health, latency, lengths)
    tracker.add_listener(latency.observe_outcome)
    tracker.add_listener(lengths.observe_outcome)
    policy = build_policy(cfg, clock)
    dispatcher = Dispatcher(
        policy, tracker, clock, max_queue=cfg.policy.max_queued, max_wait_s=cfg.policy.max_queue_wait_s
    )
    tracker.add_listener(lambda o: dispatcher.policy.on_finish(o))

    def health_changed(_backend: str, routable: bool) -> None:
        if routable:
            dispatcher.wake()

    monitor = HealthMonitor(health, clock, cfg.health, on_change=health_changed, seed=cfg.policy.seed)
    monitor.set_backends(backends.backends)
    fleet = FleetManager(membership, monitor, tracker, dispatcher, clock)
    scaling = build_scaling(cfg, fleet, tracker, clock)
    dispatcher.set_policy(watched(policy, scaling))
    control = Control(monitor, fleet=fleet, scaling=scaling)
    metrics = RouterMetrics(tracker, extra=lambda: _extra_metrics(app))
    tracker.add_listener(metrics.observe)

    app = web.Application(client_max_size=cfg.server.max_body_bytes, middlewares=[openai_errors])
    _sanitize_expect(app)
    app[CONTROL] = control

    def save_state() -> str | None:
        path = state_path(app[SERVICES].cfg)
        if path is None:
            return None
        _save_state(path, latency, lengths, clock)
        return str(path)

    control.save_state = save_state
    if Path(cfg.source).is_file():
        control.reload = lambda: reload_config(app, cfg.source, adjust)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = make_session(keepalive_s=cfg.timeouts.keepalive_s)
        forwarder = Forwarder(
            session, tracker, upstream_settings(cfg), report=monitor.report, seed=cfg.policy.seed
        )
        app[SERVICES] = Services(
            cfg=cfg,
            clock=clock,
            tracker=tracker,
            dispatcher=dispatcher,
            forwarder=forwarder,
            metrics=metrics,
            session=session,
            lengths=lengths,
        )
        monitor.start(session)
        saver = asyncio.get_running_loop().create_task(_save_periodically(app, save_state))
        hooks: aiohttp.ClientSession | None = None
        if scaling is not None:
            if scaling.sender is not None:  # its own pool: webhooks never take upstream connections
                hooks = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
                scaling.sender.start(hooks)
            scaling.start()
            log.info(
                "autoscaling on (%s mode, every %g s)", cfg.autoscale.mode.value, cfg.autoscale.interval_s
            )
        yield
        if scaling is not None:
            await scaling.stop()
            if scaling.sender is not None:
                await scaling.sender.stop()
        if hooks is not None:
            await hooks.close()
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        await monitor.stop()
        try:
            if (path := save_state()) is not None:
                log.info("model state saved to %s", path)
        except OSError as e:
            log.warning("cannot save the model state: %s", e)
        await session.close()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_post("/v1/chat/completions", openai.chat_completions)
    r.add_post("/v1/completions", openai.completions)
    r.add_get("/v1/models", ops.models)
    r.add_post("/generate", tgi.generate)
    r.add_post("/generate_stream", tgi.generate_stream)
    r.add_get("/health", ops.health)
    r.add_get("/metrics", ops.metrics)
    admin.add_routes(app)
    for path in ("/tokenize", "/detokenize"):
        r.add_post(path, ops.passthrough)
    r.add_route("*", "/v1/{tail:.*}", ops.passthrough)
    return app


def _sanitize_expect(app: web.Application) -> None:
    """aiohttp answers an ``Expect`` header it does not know with 417 before any
    middleware runs, echoing the value; a value with non-UTF-8 bytes makes that echo
    fail (a 500). Such a value is made ASCII (escaped) when the request is built, so the
    client gets the 417. (The one touch of aiohttp internals: the app's request factory.)"""
    make = app._make_request

    def make_request(message: RawRequestMessage, *args: Any, **kw: Any) -> web.Request:
        expect = message.headers.get("Expect")
        if expect is not None and not expect.isascii():
            headers = CIMultiDict(message.headers)
            headers["Expect"] = expect.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            message = message._replace(headers=CIMultiDictProxy(headers))
        return make(message, *args, **kw)

    app._make_request = make_request  # type: ignore[method-assign]


def _extra_metrics(app: web.Application) -> list[str]:
    ctl = app[CONTROL]
    lines = ctl.monitor.metric_lines() + ctl.metric_lines()
    sc = ctl.scaling
    if sc is not None:
        stats = sc.sender.stats if sc.sender is not None else None
        fams = autoscale_families(sc.scaler, sc.clock.now(), advisory=not sc.acting, webhook=stats)
        lines += text_lines(fams)
    svc = app.get(SERVICES)
    if svc is not None:
        f = svc.forwarder
        lines += [
            "# HELP slorouter_failovers_total Attempts on another backend (failures before the first byte).",
            "# TYPE slorouter_failovers_total counter",
            f"slorouter_failovers_total {f.retries}",
            "# HELP slorouter_failovers_skipped_total Failovers not started: the TTFT deadline had passed.",
            "# TYPE slorouter_failovers_skipped_total counter",
            f"slorouter_failovers_skipped_total {f.budget_stops}",
            "# HELP slorouter_upstream_resends_total Requests sent again on a fresh connection: "
            "the engine closed an idle pooled one as the request went out.",
            "# TYPE slorouter_upstream_resends_total counter",
            f"slorouter_upstream_resends_total {f.resends}",
            "# HELP slorouter_slow_clients_total Streaming clients dropped for not reading.",
            "# TYPE slorouter_slow_clients_total counter",
            f"slorouter_slow_clients_total {f.slow_clients}",
        ]
    return lines


async def _save_periodically(app: web.Application, save: Callable[[], str | None]) -> None:
    while True:
        await asyncio.sleep(app[SERVICES].cfg.models.state_save_interval_s)
        try:
            save()
        except OSError as e:
            log.warning("cannot save the model state: %s", e)


# -- reload ------------------------------------------------------------------------------------


def reload_config(
    app: web.Application, path: str, adjust: Callable[[RouterConfig], RouterConfig] | None = None
) -> ReloadReport:
    """Re-read ``path``; apply it if valid, else keep the running config (every error is
    returned and logged). Never raises for a bad file."""
    ctl = app[CONTROL]
    svc = app[SERVICES]
    errors: list[str] = []
    new: RouterConfig | None = None
    policy: Policy | None = None
    try:
        new = load_config(path)
        if adjust is not None:
            new = adjust(new)
    except ConfigError as e:
        errors = e.lines()
    if new is not None:
        try:
            # the running autoscale setting (it changes only at a restart) decides placement: auto
            policy = build_policy(replace(new, autoscale=svc.cfg.autoscale), svc.clock)
        except KeyError:
            errors.append(format_error(path, "policy.kind", f"unknown policy {new.policy.kind!r}"))
        except ParamError as e:
            errors += [format_error(path, f"policy.params.{p}", m) for p, m in e.errors]
    if errors or new is None or policy is None:
        ctl.reloads["error"] += 1
        log.error("config reload from %s refused; the running config stays:", path)
        for line in errors:
            log.error("  %s", line)
        return ReloadReport(False, errors=tuple(errors))
    report = apply_config(app, new, policy)
    ctl.reloads["ok"] += 1
    log.info("config reloaded from %s: %s", path, "; ".join(report.changes) or "no change")
    for w in report.warnings:
        log.warning("  %s", w)
    return report


_RESTART_ONLY: dict[str, Callable[[RouterConfig], object]] = {
    "server.host": lambda c: c.server.host,
    "server.port": lambda c: c.server.port,
    "server.max_body_bytes": lambda c: c.server.max_body_bytes,
    "server.max_header_count": lambda c: c.server.max_header_count,
    "server.max_header_bytes": lambda c: c.server.max_header_bytes,
    "server.shutdown_grace_s": lambda c: c.server.shutdown_grace_s,
    "models.latency_quantile": lambda c: c.models.latency_quantile,
    "models.length_quantile": lambda c: c.models.length_quantile,
    "models.profile": lambda c: c.models.profile,
    "models.default_output_tokens": lambda c: c.models.default_output_tokens,
    "autoscale": lambda c: c.autoscale,
}


def apply_config(app: web.Application, new: RouterConfig, policy: Policy) -> ReloadReport:
    """Swap a validated config into the running router. New requests use it at once;
    requests in flight finish on the backends they have (a removed backend's counters
    stay until its last request ends); requests waiting in the queue are decided
    again under the new policy and fleet."""
    svc = app[SERVICES]
    ctl = app[CONTROL]
    old = svc.cfg
    changes: list[str] = []
    warnings = [
        f"{name}: changed, takes effect after a restart"
        for name, get in _RESTART_ONLY.items()
        if get(old) != get(new)
    ]
    new = replace(new, autoscale=old.autoscale)  # restart only (warned above): the running scaler's
    fleet = ctl.fleet
    assert fleet is not None
    old_ids = [b.id for b in svc.tracker.backends.backends]
    warnings += fleet.set_config(configured_backends(new), new.tier_values)  # the one swap path
    new_ids = [b.id for b in svc.tracker.backends.backends]
    added = [b for b in new_ids if b not in old_ids]
    removed = [b for b in old_ids if b not in new_ids]
    if added:
        changes.append(f"backends added: {', '.join(added)}")
    if removed:
        changes.append(f"backends removed: {', '.join(removed)} (their in-flight requests finish)")
    if old.backends != new.backends and not added and not removed:
        changes.append("backends changed")
    if old.tiers != new.tiers:
        changes.append("tiers changed")
    if old.routing != new.routing:
        changes.append("routing (keys, header, aliases) changed")
    ctl.monitor.set_config(new.health)
    svc.forwarder.settings = upstream_settings(new)
    if old.timeouts != new.timeouts or old.retries != new.retries:
        changes.append("timeouts/retries changed")
    svc.cfg = new
    if old.policy != new.policy:
        svc.dispatcher.max_queue = new.policy.max_queued
        svc.dispatcher.max_wait_s = new.policy.max_queue_wait_s
        svc.dispatcher.set_policy(watched(policy, ctl.scaling))
        changes.append(f"policy {old.policy.kind} -> {new.policy.kind}")
    else:
        svc.dispatcher.wake()
    if old.health != new.health:
        changes.append("health settings changed")
    return ReloadReport(True, changes=tuple(changes), warnings=tuple(warnings))


def _quiet_protocol_logger() -> logging.Logger:
    """aiohttp logs every malformed request (bad header lines, too many headers) as an
    exception with the offending bytes — a log flood, and a header may hold a key. This
    logger keeps one line per bad request, at debug level, without the bytes."""

    class _Quiet(logging.Logger):
        def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
            reason = type(exc_info).__name__ if isinstance(exc_info, BaseException) else "error"
            status = getattr(exc_info, "code", "")
            self.debug("malformed request refused: %s %s", reason, status)

    lg = _Quiet("slorouter.http.protocol")
    lg.parent = logging.getLogger("slorouter.http")
    return lg


def runner_for(app: web.Application, cfg: RouterConfig) -> web.AppRunner:
    """An AppRunner with the client-facing limits of the config: header count/size, a
    client must send its request within ``client_read_timeout_s`` of connecting (or of its
    previous response: the keep-alive timer), client disconnect cancels the handler (so
    the upstream request is aborted at once)."""
    return web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        max_headers=cfg.server.max_header_count,
        max_field_size=cfg.server.max_header_bytes,
        max_line_size=cfg.server.max_header_bytes,
        shutdown_timeout=cfg.server.shutdown_grace_s,
        keepalive_timeout=cfg.server.client_read_timeout_s,
        # after answering a request whose body was not read (408, 413), keep reading (and
        # dropping) what the client still sends for a while, so it sees the answer, then close
        lingering_time=min(10.0, cfg.server.client_read_timeout_s),
        logger=_quiet_protocol_logger(),
    )
