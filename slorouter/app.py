"""The composition root: builds every part from a RouterConfig and wires them into
an aiohttp application. Nothing else constructs long-lived objects.

Background work (the upstream session, health probes, model persistence) lives in
``cleanup_ctx`` so it starts and stops with the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from slorouter.clock import Clock, RealClock
from slorouter.config.model import RouterConfig
from slorouter.http import openai, ops, tgi
from slorouter.http.context import SERVICES, Services
from slorouter.http.middleware import openai_errors
from slorouter.metrics.prometheus import RouterMetrics
from slorouter.models.latency import OnlineLatency, build_latency
from slorouter.models.lengths import LengthSettings, OnlineLengths
from slorouter.models.profile import StepProfile
from slorouter.policy import registry
from slorouter.policy.base import Policy, PolicyContext
from slorouter.proxy.dispatcher import Dispatcher
from slorouter.proxy.forward import Forwarder
from slorouter.proxy.upstream import Timeouts, UpstreamSettings, make_session
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker

log = logging.getLogger("slorouter")


def backend_set(cfg: RouterConfig) -> BackendSet:
    return BackendSet(
        (
            Backend(id=b.name, url=b.url.rstrip("/"), engine=b.engine, tier=b.tier, models=tuple(b.models))
            for b in cfg.backends
        ),
        cfg.tier_values,
    )


def upstream_settings(cfg: RouterConfig) -> UpstreamSettings:
    def conv(name: str) -> Timeouts:
        t = cfg.timeouts_for(name)
        return Timeouts(connect_s=t.connect_s, first_byte_s=t.first_byte_s, idle_s=t.idle_s)

    return UpstreamSettings(
        default=Timeouts(cfg.timeouts.connect_s, cfg.timeouts.first_byte_s, cfg.timeouts.idle_s),
        per_tier={t.name: conv(t.name) for t in cfg.tiers},
        max_attempts=cfg.retries.max_attempts,
        backoff_s=cfg.retries.backoff_s,
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


def build_app(cfg: RouterConfig, *, clock: Clock | None = None) -> web.Application:
    clock = clock or RealClock()
    backends = backend_set(cfg)
    health = Health(b.id for b in backends.backends)
    latency, lengths = build_models(cfg, clock)
    tracker = Tracker(clock, backends, health, latency, lengths)
    tracker.add_listener(latency.observe_outcome)
    tracker.add_listener(lengths.observe_outcome)
    policy = build_policy(cfg, clock)
    dispatcher = Dispatcher(policy, tracker, clock)
    tracker.add_listener(lambda o: dispatcher.policy.on_finish(o))
    metrics = RouterMetrics(tracker)
    tracker.add_listener(metrics.observe)

    app = web.Application(client_max_size=cfg.server.max_body_bytes, middlewares=[openai_errors])

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = make_session()
        forwarder = Forwarder(session, tracker, upstream_settings(cfg), seed=cfg.policy.seed)
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
        yield
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
    for path in ("/tokenize", "/detokenize"):
        r.add_post(path, ops.passthrough)
    r.add_route("*", "/v1/{tail:.*}", ops.passthrough)
    return app


def runner_for(app: web.Application, cfg: RouterConfig) -> web.AppRunner:
    """An AppRunner with the client-facing limits of the config: header count/size, client
    disconnect cancels the handler (so the upstream request is aborted at once)."""
    return web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        max_headers=cfg.server.max_header_count,
        max_field_size=cfg.server.max_header_bytes,
        max_line_size=cfg.server.max_header_bytes,
        shutdown_timeout=cfg.server.shutdown_grace_s,
    )
