"""Hot reload: ``SIGHUP`` and ``POST /admin/reload`` re-read the config file.

:func:`reload_config` validates the new file exactly as at start (config and policy
parameters) and either refuses it (every error returned and logged; nothing changes) or
hands it to :func:`apply_config`, the one place a reloaded config reaches the running
parts. Fields declared ``restart=True`` in :mod:`slorouter.config.model` are applied at
start only: a reload that changes one says so in its warnings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from slorouter.app.parts import build_policy, configured_backends, upstream_settings
from slorouter.app.scaling import watched
from slorouter.config import ConfigError, format_error, load_config
from slorouter.config.fields import restart_changes
from slorouter.config.model import RouterConfig
from slorouter.http.admin import CONTROL, ReloadReport
from slorouter.http.context import SERVICES
from slorouter.policy.base import ParamError, Policy

log = logging.getLogger("slorouter")


def reload_config(
    app: web.Application, path: str, adjust: Callable[[RouterConfig], RouterConfig] | None = None
) -> ReloadReport:
    """Re-read ``path``; apply it if valid, else keep the running config (every error is
    returned and logged). Never raises for a bad file. ``adjust`` is applied to the new
    config first (``slorouter serve`` keeps its --host/--port with it)."""
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


def apply_config(app: web.Application, new: RouterConfig, policy: Policy) -> ReloadReport:
    """Swap a validated config into the running router. New requests use it at once;
    requests in flight finish on the backends they have (a removed backend's counters
    stay until its last request ends); requests waiting in the queue are decided
    again under the new policy and fleet."""
    svc = app[SERVICES]
    ctl = app[CONTROL]
    old = svc.cfg
    changes: list[str] = []
    warnings = [f"{path}: changed, takes effect after a restart" for path in restart_changes(old, new)]
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
        svc.dispatcher.set_limits(new.policy.max_queued, new.policy.max_queue_wait_s)
        svc.dispatcher.set_policy(watched(policy, ctl.scaling))
        changes.append(f"policy {old.policy.kind} -> {new.policy.kind}")
    else:
        svc.dispatcher.wake()
    if old.health != new.health:
        changes.append("health settings changed")
    return ReloadReport(True, changes=tuple(changes), warnings=tuple(warnings))
