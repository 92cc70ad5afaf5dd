"""The autoscaler's configuration (``autoscale:`` in the router's YAML): per-tier floors
and ceilings, the scaling rules' rates and cooldowns, the webhooks decisions go to
(docs/autoscaling.md). Part of :class:`~slorouter.config.model.RouterConfig`, declared
the same way (:mod:`slorouter.config.model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated

from slorouter.config.fields import ENV, F


class ScaleMode(StrEnum):
    WEBHOOK = "webhook"  # act: move and release servers, POST every decision to the webhooks
    ADVISORY = "advisory"  # only log the decisions and export them as gauges


@dataclass(frozen=True, slots=True)
class TierScaleConfig:
    """Floor and ceiling of one tier's servers."""

    min_servers: Annotated[int, F("never fewer servers in this tier", ge=0)] = 0
    max_servers: Annotated[int | None, F("never more servers in this tier (default: no limit)", ge=1)] = None


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Where scaling decisions are POSTed (JSON, HMAC-SHA256 signed; docs/autoscaling.md)."""

    urls: Annotated[tuple[str, ...], F("URLs told of every decision (http:// or https://)")] = ()
    secret_env: Annotated[
        str, F("environment variable holding the HMAC-SHA256 signing secret", pattern=ENV)
    ] = "SLOROUTER_WEBHOOK_SECRET"
    timeout_s: Annotated[float, F("one attempt's timeout", unit="s", gt=0)] = 5.0
    max_attempts: Annotated[int, F("attempts per decision and URL, the first included", ge=1)] = 8
    backoff_s: Annotated[float, F("first pause between attempts (doubles, with jitter)", unit="s", ge=0)] = (
        0.5
    )
    backoff_max_s: Annotated[float, F("longest pause between attempts", unit="s", ge=0)] = 30.0
    queue_size: Annotated[
        int, F("decisions waiting to be sent, per URL; beyond, the oldest is dropped", ge=1)
    ] = 256


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """Per-tier autoscaling (docs/autoscaling.md): servers needed from each tier's
    arrival rate (and its forecast) and fluid cost, one more when on-time requests fit
    nowhere, empty servers moved to short tiers before new ones are asked for, idle ones
    given back."""

    enabled: Annotated[bool, F("run the scaler (and pack requests: placement auto)")] = False
    mode: Annotated[ScaleMode, F("webhook (act and tell the webhooks) | advisory (log and export only)")] = (
        ScaleMode.ADVISORY
    )
    interval_s: Annotated[float, F("how often the scaler decides", unit="s", gt=0)] = 2.0
    provisioning_delay_s: Annotated[
        float, F("time from asking for a server to its first request: the forecast horizon", unit="s", ge=0)
    ] = 120.0
    target_utilization: Annotated[
        float, F("share of the fluid capacity a tier's servers may carry; above it, scale out", gt=0, le=1)
    ] = 0.85
    scale_in_utilization: Annotated[
        float, F("release only while the servers left stay below this share (hysteresis)", gt=0, le=1)
    ] = 0.65
    rate_half_life_s: Annotated[float, F("half-life of the arrival rate's EWMA", unit="s", gt=0)] = 30.0
    trend_half_life_s: Annotated[float, F("half-life of the rate trend's EWMA", unit="s", gt=0)] = 120.0
    trigger_window_s: Annotated[
        float, F("an on-time request that fit nowhere asks for one more server for this long", unit="s", gt=0)
    ] = 10.0
    scale_out_cooldown_s: Annotated[
        float, F("least time between two increases of a tier's servers", unit="s", ge=0)
    ] = 30.0
    scale_in_cooldown_s: Annotated[
        float,
        F("after a tier grew (or a server moved), this long before it gives servers up", unit="s", ge=0),
    ] = 120.0
    idle_s: Annotated[float, F("an empty server is released after", unit="s", gt=0)] = 60.0
    reask_after_s: Annotated[
        float, F("servers asked for and not registered after this long are asked for again", unit="s", gt=0)
    ] = 600.0
    attainment_window_s: Annotated[float, F("window of the per-tier attainment gauge", unit="s", gt=0)] = 60.0
    min_backends: Annotated[int, F("never scale below, in all", ge=0)] = 1
    max_backends: Annotated[int | None, F("never scale above, in all (default: no limit)", ge=1)] = None
    tiers: Annotated[Mapping[str, TierScaleConfig], F("per-tier floor and ceiling (tier name -> limits)")] = (
        field(default_factory=lambda: MappingProxyType({}))
    )
    webhook: Annotated[WebhookConfig, F("where decisions are sent (mode: webhook)")] = WebhookConfig()

    def limits(self, tier: str) -> TierScaleConfig:
        return self.tiers.get(tier) or TierScaleConfig()
