"""``slorouter config check FILE...`` and ``slorouter config schema``.

``check`` validates a file exactly as the router does at start (and on reload): the
config itself (:func:`slorouter.config.load_config`) and the policy's ``kind`` and
``params`` (through the policy registry). It prints ``OK: FILE (N tiers, M backends,
policy KIND)`` or every error, one per line, and exits 1 on any error.
:func:`check_file` is the reusable part (the router's startup calls it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slorouter.clock import ManualClock
from slorouter.config import ConfigError, RouterConfig, format_error, json_schema, parse_config, read_file
from slorouter.config.fields import suggest
from slorouter.policy import registry
from slorouter.policy.base import ParamError, PolicyContext


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate config files (exit 1 on any error)")
    check.add_argument("files", nargs="+", metavar="FILE", help="YAML config file(s)")
    sub.add_parser("schema", help="print the config's JSON Schema (draft 2020-12)")


def policy_errors(source: str, raw: Any, autoscaling: bool = False) -> list[str]:
    """Errors of the raw ``policy`` section, as the policy registry sees them. Sections
    with the wrong shape are skipped (the config validator already reported them)."""
    policy = raw.get("policy", {}) if isinstance(raw, Mapping) else {}
    if not isinstance(policy, Mapping):
        return []
    kind = policy.get("kind", "round-robin")
    params = policy.get("params") or {}
    seed = policy.get("seed", 0)
    if not isinstance(kind, str) or not kind or not isinstance(params, Mapping):
        return []
    ctx = PolicyContext(ManualClock(), seed=seed if isinstance(seed, int) else 0, autoscaling=autoscaling)
    try:
        registry.build(kind, params, ctx)
    except KeyError:
        known = registry.kinds()
        msg = f"unknown policy {kind!r}{suggest(kind, known)} (known: {', '.join(known)})"
        return [format_error(source, "policy.kind", msg)]
    except ParamError as e:
        return [format_error(source, f"policy.params.{p}", m) for p, m in e.errors]
    return []


def check(path: str) -> tuple[RouterConfig | None, list[str]]:
    """(config or None, every error line) for one file."""
    source = str(path)
    try:
        raw = read_file(path)
    except ConfigError as e:
        return None, e.lines()
    cfg: RouterConfig | None = None
    errors: list[str] = []
    try:
        cfg = parse_config(raw, source, base_dir=Path(path).parent)
    except ConfigError as e:
        errors = e.lines()
    autoscale = raw.get("autoscale") if isinstance(raw, Mapping) else None
    scaling = isinstance(autoscale, Mapping) and autoscale.get("enabled") is True
    errors += policy_errors(source, raw, scaling)
    return (cfg if not errors else None), errors


def check_file(path: str) -> list[str]:
    """Every error line (``FILE: PATH: MESSAGE``) of a config file; empty when valid."""
    return check(path)[1]


def run(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        json.dump(json_schema(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    status = 0
    for path in args.files:
        cfg, errors = check(path)
        if errors or cfg is None:
            status = 1
            for line in errors:
                print(line)
            print(f"FAILED: {path} ({len(errors)} error{'s' if len(errors) != 1 else ''})")
            continue
        print(f"OK: {path} ({len(cfg.tiers)} tiers, {len(cfg.backends)} backends, policy {cfg.policy.kind})")
    return status
