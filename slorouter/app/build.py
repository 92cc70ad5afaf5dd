"""Wiring: builds every part from a RouterConfig and connects them into an aiohttp
application and its runner. Nothing else constructs long-lived objects.

Background work (the upstream session, health probes, model persistence, the scaler and
its webhooks) lives in
``cleanup_ctx`` so it starts and stops with the app. Reload lives in
:mod:`slorouter.app.reload`, the model state file in :mod:`slorouter.app.state_file`,
the metrics in :mod:`slorouter.metrics`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from slorouter.actuation.fleet import FleetManager
from slorouter.actuation.fleetshare import FleetShare
from slorouter.app.parts import build_models, build_policy, configured_backends, upstream_settings
from slorouter.app.reload import reload_config
from slorouter.app.scaling import build_scaling, watched
from slorouter.app.state_file import load_state, save_periodically, save_state, state_path
from slorouter.clock import Clock, RealClock
from slorouter.config.model import RouterConfig
from slorouter.http import admin, openai, ops, tgi
from slorouter.http.admin import CONTROL, Control
from slorouter.http.context import SERVICES, Services
from slorouter.http.expect import escape_expect_header
from slorouter.http.middleware import openai_errors
from slorouter.metrics import build_registry, scrape_handler
from slorouter.metrics.admission import AdmissionMetrics
from slorouter.metrics.autoscale import AutoscaleMetrics
from slorouter.metrics.control import ControlMetrics
from slorouter.metrics.forwarding import ForwardingMetrics
from slorouter.metrics.gain import GainMetrics
from slorouter.metrics.health import HealthMetrics
from slorouter.metrics.host import HostMetrics, HostShare
from slorouter.metrics.requests import RequestMetrics
from slorouter.metrics.sync import SyncMetrics
from slorouter.models.workflows import WorkflowBook
from slorouter.proxy.dispatcher import Dispatcher
from slorouter.proxy.forward import Forwarder
from slorouter.proxy.health import HealthMonitor
from slorouter.proxy.sharing import SharedState, shared_state_of
from slorouter.proxy.syncloop import SyncLoop
from slorouter.proxy.upstream import make_session
from slorouter.state.backends import Health
from slorouter.state.learning import LearningShare
from slorouter.state.membership import Membership
from slorouter.state.sync import LoadSync
from slorouter.state.tracker import Tracker

log = logging.getLogger("slorouter")


def build_app(
    cfg: RouterConfig,
    *,
    clock: Clock | None = None,
    adjust: Callable[[RouterConfig], RouterConfig] | None = None,
    shared: SharedState | None = None,
    worker: int | None = None,
    host: HostShare | None = None,
) -> web.Application:
    """The router. ``cfg.source`` names the config file that ``/admin/reload`` and SIGHUP
    re-read (a config built in memory cannot be reloaded); ``adjust`` is applied to every
    re-read config (``slorouter serve`` uses it to keep its --host/--port). ``shared``:
    the store and holder name this process shares its load picture through (workers of
    one host); else ``state.sync`` of the config says (replicas). ``host``: this worker's part
    in the host's ``/metrics`` (``--workers N``: any worker answers for all of them)."""
    clock = clock or RealClock()
    membership = Membership(configured_backends(cfg), cfg.tier_values)
    backends = membership.build()
    health = Health(b.id for b in backends.backends)
    latency, lengths = build_models(cfg, clock)
    saved = state_path(cfg)
    if saved is not None:
        load_state(saved, latency, lengths, clock)
    tracker = Tracker(clock, backends, health, latency, lengths)
    tracker.add_listener(latency.observe_outcome)
    tracker.add_listener(lengths.observe_outcome)
    workflows = WorkflowBook()
    tracker.add_listener(workflows.observe_outcome)
    policy = build_policy(cfg, clock)
    admission = AdmissionMetrics()
    dispatcher = Dispatcher(
        policy,
        tracker,
        clock,
        max_queue=cfg.policy.max_queued,
        max_wait_s=cfg.policy.max_queue_wait_s,
        observe=admission.observe,
    )

    def health_changed(_backend: str, routable: bool) -> None:
        if routable:
            dispatcher.wake()

    shared = shared or shared_state_of(cfg)
    syncer: SyncLoop | None = None
    if shared is not None:
        # a row keeps this process's recent observations for four ticks (at most half the
        # TTL): a reader that exchanges at least that often (every tick) misses none
        keep_s = min(4 * shared.tick_s, shared.ttl_s / 2)
        learning = LearningShare(latency, time.time, keep_s=keep_s) if shared.share_learning else None
        sync = LoadSync(
            tracker,
            shared.holder,
            learning=learning,
            quota=shared.quota,
            wall=time.time,
            control=lambda: dispatcher.policy.shared_state(),
            adopt=lambda states: dispatcher.policy.adopt_shared(states),
        )
        syncer = SyncLoop(
            sync,
            shared.store,
            tick_s=shared.tick_s,
            ttl_s=shared.ttl_s,
            on_freed=dispatcher.wake,
            event_s=shared.event_s,
        )

    monitor = HealthMonitor(health, clock, cfg.health, on_change=health_changed, seed=cfg.policy.seed)
    monitor.set_backends(backends.backends)
    fleet = FleetManager(membership, monitor, tracker, dispatcher, clock)
    scaling = build_scaling(cfg, fleet, tracker, clock, holder=shared.holder if shared is not None else None)
    if syncer is not None and shared is not None:  # admin changes and the scaler reach every process
        share = FleetShare(fleet, shared.holder)
        syncer.extras.append(share.extras)
        syncer.observers.append(share.observe)
        if scaling is not None and scaling.shared is not None:
            syncer.extras.append(scaling.shared.extras)
            syncer.observers.append(scaling.shared.observe)
    dispatcher.set_policy(watched(policy, scaling))
    control = Control(monitor, fleet=fleet, scaling=scaling)
    requests = RequestMetrics(tracker)
    tracker.add_listener(requests.observe)
    gain = GainMetrics()
    tracker.add_listener(gain.observe)

    app = web.Application(client_max_size=cfg.server.max_body_bytes, middlewares=[openai_errors])
    escape_expect_header(app)
    app[CONTROL] = control
    registry = build_registry(
        requests,
        gain,
        admission,
        HealthMetrics(monitor),
        ForwardingMetrics(lambda: svc.forwarder if (svc := app.get(SERVICES)) is not None else None),
        ControlMetrics(control),
        SyncMetrics(tracker, syncer),
        *([AutoscaleMetrics(scaling)] if scaling is not None else []),
    )
    host_metrics = HostMetrics(host, registry) if host is not None else None

    def save() -> str | None:
        path = state_path(app[SERVICES].cfg)
        if path is None or (syncer is not None and not syncer.leader):
            return None  # one writer of the state file: the leader
        save_state(path, latency, lengths, clock)
        return str(path)

    control.save_state = save
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
            session=session,
            lengths=lengths,
            workflows=workflows,
            worker=worker,
            syncer=syncer,
        )
        monitor.start(session)
        if host_metrics is not None:
            host_metrics.start()
        if syncer is not None:
            syncer.start()
        saver = asyncio.get_running_loop().create_task(
            save_periodically(lambda: app[SERVICES].cfg.models.state_save_interval_s, save)
        )
        hooks: aiohttp.ClientSession | None = None
        if scaling is not None:
            if scaling.sender is not None:  # its own pool: webhooks never take upstream connections
                hooks = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
                scaling.sender.start(hooks)
            scaling.start()
            auto = cfg.autoscale
            log.info("autoscaling on (%s mode, every %g s)", auto.mode.value, auto.interval_s)
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
        if syncer is not None:
            await syncer.stop()
        try:
            if (path := save()) is not None:
                log.info("model state saved to %s", path)
        except OSError as e:
            log.warning("cannot save the model state: %s", e)
        if host_metrics is not None:
            host_metrics.stop()
        await session.close()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_post("/v1/chat/completions", openai.chat_completions)
    r.add_post("/v1/completions", openai.completions)
    r.add_get("/v1/models", ops.models)
    r.add_post("/generate", tgi.generate)
    r.add_post("/generate_stream", tgi.generate_stream)
    r.add_get("/health", ops.health)
    r.add_get("/metrics", host_metrics.handler() if host_metrics is not None else scrape_handler(registry))
    admin.add_routes(app)
    for path in ("/tokenize", "/detokenize"):
        r.add_post(path, ops.passthrough)
    r.add_route("*", "/v1/{tail:.*}", ops.passthrough)
    return app


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
