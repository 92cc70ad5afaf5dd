"""The running parts built from a :class:`RouterConfig`, at start and again on a reload."""

from __future__ import annotations

from slorouter.clock import Clock
from slorouter.config.model import RouterConfig
from slorouter.models.latency import OnlineLatency, build_latency
from slorouter.models.lengths import LengthSettings, OnlineLengths
from slorouter.models.profile import StepProfile
from slorouter.policy import registry
from slorouter.policy.base import Policy, PolicyContext
from slorouter.proxy.upstream import Timeouts, UpstreamSettings
from slorouter.state.backends import Backend


def configured_backends(cfg: RouterConfig) -> list[Backend]:
    return [
        Backend(
            id=b.name,
            url=b.url.rstrip("/"),
            engine=b.engine,
            tier=b.tier,
            models=tuple(b.models),
            api_key=b.api_key,
        )
        for b in cfg.backends
    ]


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
