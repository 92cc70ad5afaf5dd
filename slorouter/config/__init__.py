"""Layer 1: the router's YAML configuration.

``load_config(path)`` returns a frozen :class:`RouterConfig` or raises
:class:`ConfigError` listing every mistake as ``FILE: PATH: MESSAGE``.
``json_schema()`` gives the matching JSON Schema. Tier resolution per request (API key,
header, model alias) lives in :mod:`slorouter.config.entitlement`.

Policy ``kind``/``params`` are only type-checked here; the policy registry (a higher
layer) validates them (``slorouter.tools.config_cmd.check_file`` does both).
"""

from slorouter.config.autoscale import AutoscaleConfig
from slorouter.config.loader import ConfigError, format_error, load_config, parse_config, read_file
from slorouter.config.model import (
    AdminConfig,
    AliasConfig,
    BackendConfig,
    HealthConfig,
    KeyConfig,
    ModelsConfig,
    PolicyConfig,
    RetryConfig,
    RouterConfig,
    RoutingConfig,
    ServerConfig,
    TierConfig,
    TimeoutOverrides,
    Timeouts,
)
from slorouter.config.schema import json_schema

__all__ = [
    "AdminConfig",
    "AliasConfig",
    "AutoscaleConfig",
    "BackendConfig",
    "ConfigError",
    "HealthConfig",
    "KeyConfig",
    "ModelsConfig",
    "PolicyConfig",
    "RetryConfig",
    "RouterConfig",
    "RoutingConfig",
    "ServerConfig",
    "TierConfig",
    "TimeoutOverrides",
    "Timeouts",
    "format_error",
    "json_schema",
    "load_config",
    "parse_config",
    "read_file",
]
