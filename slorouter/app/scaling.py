"""The autoscaling parts, built at start when ``autoscale.enabled`` (docs/autoscaling.md):
the pure :class:`~slorouter.autoscale.scaler.Scaler`, its background runner, the webhook
sender (``mode: webhook``) and the policy wrapper that reports on-time deferrals."""

from __future__ import annotations

import os
import uuid

from slorouter.actuation.fleet import FleetManager
from slorouter.actuation.leadscale import SharedScaling
from slorouter.actuation.scaling import DeferWatch, ScaleRunner
from slorouter.actuation.webhook import WebhookSender
from slorouter.autoscale.feed import LocalFeed
from slorouter.autoscale.scaler import Scaler
from slorouter.clock import Clock
from slorouter.config import ConfigError
from slorouter.config.autoscale import ScaleMode
from slorouter.config.model import RouterConfig
from slorouter.policy.base import Policy
from slorouter.state.tracker import Tracker


def build_scaling(
    cfg: RouterConfig, fleet: FleetManager, tracker: Tracker, clock: Clock, *, holder: str | None = None
) -> ScaleRunner | None:
    """The scaler and its runner when ``autoscale.enabled`` (None otherwise). ``holder``:
    this process's name in the shared load picture (workers, replicas): then only the
    leader ticks the scaler, on every process's counts (:mod:`slorouter.actuation.leadscale`;
    the caller connects :attr:`ScaleRunner.shared` to the sync loop)."""
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
    shared = None
    if holder is None:
        tracker.add_listener(scaler.observe_outcome)
    else:
        feed = LocalFeed(cfg.tier_values, boot=uuid.uuid4().hex[:12])
        tracker.add_listener(feed.observe_outcome)
        shared = SharedScaling(holder, feed, clock)
    sender = None
    if auto.mode is ScaleMode.WEBHOOK:
        secret = os.environ.get(auto.webhook.secret_env, "")
        if not secret:  # the config check says so first; the environment may have changed since
            msg = f"environment variable {auto.webhook.secret_env} is not set"
            raise ConfigError(cfg.source, [("autoscale.webhook.secret_env", msg)])
        sender = made = WebhookSender(auto.webhook, secret.encode(), seed=cfg.policy.seed)
        if shared is not None:  # the exported delivery counts carry on across leaders
            shared.hook_stats = lambda: made.stats
    runner = ScaleRunner(scaler, auto, fleet, tracker, clock, sender, shared=shared)
    if shared is not None:  # a next leader sends again what this one had not delivered
        shared.unsent = runner.unsent
    return runner


def watched(policy: Policy, scaling: ScaleRunner | None) -> Policy:
    """The policy, reporting on-time deferrals to the scaler when one runs (to this
    process's feed when several processes share the scaler)."""
    if scaling is None:
        return policy
    return DeferWatch(policy, scaling.scaler if scaling.shared is None else scaling.shared.feed)
