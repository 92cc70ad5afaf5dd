"""The configuration, as frozen typed dataclasses. These declarations *are* the format:
the validator (:mod:`slorouter.config.fields`) and the JSON Schema are derived from them,
and ``config/example.yaml`` documents every field with the same units and defaults.

A field declared ``F(..., restart=True)`` is applied at start only: a hot reload that
changes it warns ``PATH: changed, takes effect after a restart`` (:mod:`slorouter.app.reload`).

Units are in the field names: ``*_ms`` milliseconds, ``*_s`` seconds, ``*_bytes`` bytes.
Per-request SLO numbers are milliseconds (what users write); everything the router
computes with is seconds (:class:`slorouter.values.Slo`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from slorouter.config.autoscale import AutoscaleConfig
from slorouter.config.fields import ENV, HEADER, NAME, F
from slorouter.values import Engine, Slo, SloClass, Tier, WhenLate


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where the router listens and the limits it puts on client requests."""

    host: Annotated[str, F("address to bind (0.0.0.0: every interface)", min_length=1, restart=True)] = (
        "127.0.0.1"
    )
    port: Annotated[int, F("TCP port to listen on", ge=1, le=65535, restart=True)] = 8080
    max_body_bytes: Annotated[
        int, F("largest request body accepted (larger: 413)", unit="bytes", gt=0, restart=True)
    ] = 4 * 1024 * 1024
    max_header_count: Annotated[int, F("most request header fields accepted", gt=0, restart=True)] = 100
    max_header_bytes: Annotated[
        int, F("longest request header line accepted", unit="bytes", gt=0, restart=True)
    ] = 8190
    client_read_timeout_s: Annotated[
        float, F("longest wait for a client to send its request (slow clients are cut)", unit="s", gt=0)
    ] = 30.0
    shutdown_grace_s: Annotated[
        float, F("on shutdown, how long in-flight requests may finish", unit="s", ge=0, restart=True)
    ] = 30.0


@dataclass(frozen=True, slots=True)
class TimeoutOverrides:
    """Per-tier upstream timeouts; unset fields fall back to the top-level ``timeouts``."""

    connect_s: Annotated[float | None, F("connect to the backend", unit="s", gt=0)] = None
    first_byte_s: Annotated[float | None, F("from sending to the first response byte", unit="s", gt=0)] = None
    idle_s: Annotated[float | None, F("longest silence between two streamed chunks", unit="s", gt=0)] = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts. A request hitting one fails (and is retried elsewhere if no byte
    reached the client yet)."""

    connect_s: Annotated[float, F("connect to the backend", unit="s", gt=0)] = 3.0
    first_byte_s: Annotated[float, F("from sending to the first response byte", unit="s", gt=0)] = 120.0
    idle_s: Annotated[float, F("longest silence between two streamed chunks", unit="s", gt=0)] = 60.0
    keepalive_s: Annotated[
        float,
        F(
            "how long an idle pooled connection to a backend is kept; stay below the engine's own "
            "idle timeout (vLLM and uvicorn close at 5 s), or requests race the engine's close",
            unit="s",
            gt=0,
            restart=True,
        ),
    ] = 4.0

    def merged(self, o: TimeoutOverrides | None) -> Timeouts:
        if o is None:
            return self
        return Timeouts(
            connect_s=o.connect_s if o.connect_s is not None else self.connect_s,
            first_byte_s=o.first_byte_s if o.first_byte_s is not None else self.first_byte_s,
            idle_s=o.idle_s if o.idle_s is not None else self.idle_s,
            keepalive_s=self.keepalive_s,
        )


@dataclass(frozen=True, slots=True)
class TierConfig:
    """A named SLO (the classes and what meeting one means: docs/loadgen.md, "Metric
    definitions"). ``latency`` needs ttft_ms and tpot_ms; ``deadline`` and ``workflow``
    need deadline_ms; ``best_effort`` has no numbers."""

    name: Annotated[str, F("tier name (used by keys, headers and model aliases)", pattern=NAME)]
    slo_class: Annotated[SloClass, F("latency | deadline | workflow | best_effort", key="class")]
    ttft_ms: Annotated[
        float | None, F("time to first token, from arrival at the router", unit="ms", gt=0)
    ] = None
    tpot_ms: Annotated[float | None, F("time per output token (per-token deadline)", unit="ms", gt=0)] = None
    deadline_ms: Annotated[
        float | None, F("whole response (deadline) or last call of the workflow", unit="ms", gt=0)
    ] = None
    weight: Annotated[float, F("value (price) of this tier's work relative to others", gt=0)] = 1.0
    when_late: Annotated[
        WhenLate | None,
        F(
            "a request whose SLO can no longer be met: reject (429 with Retry-After, the default) "
            "or best_effort (served late, on room no on-time request needs); not for best_effort tiers"
        ),
    ] = None
    timeouts: Annotated[TimeoutOverrides | None, F("per-tier upstream timeout overrides")] = None

    # keys of earlier versions: the message says what replaced them (a config error)
    RENAMED: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "reject_when_late": "replaced by when_late: reject | best_effort "
            "(reject_when_late: true is when_late: reject, the default now; false is when_late: best_effort)"
        }
    )

    def slo(self) -> Slo:
        def s(ms: float | None) -> float | None:
            return None if ms is None else ms / 1000.0

        return Slo(self.slo_class, s(self.ttft_ms), s(self.tpot_ms), s(self.deadline_ms))


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """One engine server."""

    url: Annotated[str, F("base URL, http(s)://host:port[/prefix], no trailing slash needed")]
    name: Annotated[str, F("unique id (default: b<index>, 0-based)", pattern=NAME, derived=True)] = ""
    engine: Annotated[Engine, F("vllm | tgi | openai (wire format and metrics it speaks)")] = Engine.VLLM
    tier: Annotated[
        str, F("initial tier bin of this server (default: routing.default_tier)", derived=True)
    ] = ""
    models: Annotated[
        tuple[str, ...],
        F("model names served: requests for other models go elsewhere (empty: any model)"),
    ] = ()
    api_key_env: Annotated[
        str | None,
        F(
            "environment variable holding the key this engine requires (vLLM --api-key), sent as "
            "`Authorization: Bearer` on every request to it",
            pattern=ENV,
        ),
    ] = None
    # filled by the loader: the value of api_key_env
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """An API key and what it is entitled to. Give the secret via ``key_env`` (the name of
    an environment variable) in production; ``key`` (literal) is for local tests."""

    name: Annotated[str, F("non-secret id of this key (appears in logs and metrics)", pattern=NAME)]
    tiers: Annotated[tuple[str, ...], F("tiers this key may use (header or alias)", min_items=1)]
    key: Annotated[str | None, F("the secret itself (avoid: prefer key_env)", min_length=1)] = field(
        default=None, repr=False
    )
    key_env: Annotated[str | None, F("environment variable holding the secret", pattern=ENV)] = None
    default_tier: Annotated[str, F("tier when the request names none (default: tiers[0])", derived=True)] = ""
    # filled by the loader: sha256 of the secret, compared in constant time
    digest: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class AliasConfig:
    """An explicit model alias: requests for the alias go to ``model`` in ``tier``."""

    model: Annotated[str, F("the model name sent to the backend", min_length=1)]
    tier: Annotated[str, F("the tier the alias selects")]


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """How requests reach tiers: API key (entitlement), header, model alias."""

    header: Annotated[str, F("request header naming a tier", pattern=HEADER)] = "x-slo-tier"
    default_tier: Annotated[
        str, F("tier of requests naming none (required when several tiers exist)", derived=True)
    ] = ""
    allow_anonymous: Annotated[bool, F("accept requests without an API key (they get default_tier)")] = False
    anonymous_tiers: Annotated[
        tuple[str, ...] | None,
        F("tiers anonymous requests may pick (default: all tiers if no keys exist, else default_tier)"),
    ] = None
    keys: Annotated[tuple[KeyConfig, ...], F("API keys and their entitlements")] = ()
    aliases: Annotated[
        Mapping[str, AliasConfig], F("model aliases; MODEL@TIER also works without declaring it")
    ] = field(default_factory=lambda: MappingProxyType({}))
    # filled by the loader: the tiers an anonymous request may use (default_tier included)
    anonymous_allowed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The routing policy (kind and params are checked by the policy registry)."""

    kind: Annotated[str, F("policy name, e.g. round-robin, least-request, polyserve", min_length=1)] = (
        "round-robin"
    )
    params: Annotated[Mapping[str, Any], F("policy-specific parameters")] = field(
        default_factory=lambda: MappingProxyType({})
    )
    seed: Annotated[int, F("seed for randomized policies")] = 0
    max_queued: Annotated[
        int | None,
        F(
            "most requests the router queue holds; beyond: 429 (default: no fixed count — every "
            "queued request leaves by its tier's wait limit, and an arrival whose predicted wait "
            "exceeds that limit is answered 429 at once)",
            ge=0,
        ),
    ] = None
    max_queue_wait_s: Annotated[
        float | None,
        F(
            "longest any request waits in the router queue, then 429 (default: per tier, from its "
            "objective: TTFT + 1 s for latency tiers, the deadline for deadline and workflow "
            "tiers, 60 s for best_effort tiers)",
            unit="s",
            gt=0,
        ),
    ] = None


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    """Latency and output-length models."""

    latency_quantile: Annotated[
        float, F("quantile of step time used for feasibility", gt=0, lt=1, restart=True)
    ] = 0.9
    length_quantile: Annotated[
        float, F("quantile of output length used as its bound", gt=0, lt=1, restart=True)
    ] = 0.9
    profile: Annotated[
        str | None,
        F("latency profile JSON (slorouter profile); relative to this file", min_length=1, restart=True),
    ] = None
    default_output_tokens: Annotated[
        int, F("output-length bound before any length is observed", unit="tokens", gt=0, restart=True)
    ] = 256
    state_file: Annotated[
        str | None,
        F(
            "file the learned models are saved to and loaded from (warm restart); relative to this file",
            min_length=1,
        ),
    ] = None
    state_save_interval_s: Annotated[
        float, F("how often the learned models are saved (also on shutdown)", unit="s", gt=0)
    ] = 60.0


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Admin endpoints (/admin/...). Disabled while the variable is unset or empty."""

    token_env: Annotated[str, F("environment variable holding the admin bearer token", pattern=ENV)] = (
        "SLOROUTER_ADMIN_TOKEN"
    )


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Failover of requests that fail before their first byte reached the client."""

    max_attempts: Annotated[int, F("attempts in total, the first included", ge=1)] = 3
    backoff_s: Annotated[float, F("first pause between attempts (doubles, with jitter)", unit="s", ge=0)] = (
        0.05
    )
    backoff_max_s: Annotated[float, F("longest pause between attempts", unit="s", ge=0)] = 1.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Active health probes with hysteresis, and the passive circuit breaker."""

    path: Annotated[str, F("probe path on each backend", pattern=r"/\S*")] = "/health"
    interval_s: Annotated[float, F("time between probes", unit="s", gt=0)] = 2.0
    timeout_s: Annotated[float, F("probe timeout", unit="s", gt=0)] = 1.0
    failures: Annotated[int, F("consecutive failures that eject a backend", ge=1)] = 3
    successes: Annotated[int, F("consecutive successes that bring it back", ge=1)] = 2
    cooldown_s: Annotated[float, F("open circuit: wait before a half-open trial", unit="s", gt=0)] = 5.0


class SyncKind(StrEnum):
    NONE = "none"  # this process alone (or the workers of one host: shared memory, automatic)
    REDIS = "redis"  # replicas on several hosts share rows through Redis / Valkey


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Sharing the load picture with other router replicas (docs/scale-out.md)."""

    kind: Annotated[SyncKind, F("none | redis: replicas share per-backend rows through Redis/Valkey")] = (
        SyncKind.NONE
    )
    url: Annotated[
        str | None, F("the store, redis://[user:password@]host:port/db (kind: redis)", min_length=1)
    ] = None
    tick_ms: Annotated[float, F("publish this replica's row and read the others' every", unit="ms", gt=0)] = (
        100.0
    )
    ttl_ms: Annotated[
        float, F("a row not refreshed within this vanishes (a dead replica's share)", unit="ms", gt=0)
    ] = 500.0
    event_ms: Annotated[
        float,
        F(
            "after a placement or a departure of its own, exchange this long after the last"
            " exchange instead of at the tick (0: at the tick only)",
            unit="ms",
            ge=0,
        ),
    ] = 25.0
    quota: Annotated[
        bool, F("herding guard: between updates, use only this replica's share of a server's room")
    ] = True
    prefix: Annotated[str, F("key prefix in the store: one per logical router", min_length=1)] = "slorouter"
    share_learning: Annotated[
        bool,
        F(
            "every replica's latency model learns from every replica's outcomes (each publishes"
            " what its model learns from with its row; false: each from its own)"
        ),
    ] = True


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Shared state between router processes."""

    sync: Annotated[SyncConfig, F("the load picture shared with other replicas", restart=True)] = SyncConfig()


def _rank(tiers: tuple[TierConfig, ...]) -> tuple[Tier, ...]:
    order = sorted(range(len(tiers)), key=lambda i: (tiers[i].slo().tightness, i))
    rank = {i: r for r, i in enumerate(order)}
    return tuple(
        Tier(t.name, t.slo(), weight=t.weight, rank=rank[i], when_late=t.when_late or WhenLate.REJECT)
        for i, t in enumerate(tiers)
    )


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """The whole router configuration (one YAML file)."""

    tiers: Annotated[tuple[TierConfig, ...], F("the SLO tiers", min_items=1)]
    backends: Annotated[tuple[BackendConfig, ...], F("the engine servers", min_items=1)]
    server: Annotated[ServerConfig, F("listening socket and client limits")] = ServerConfig()
    routing: Annotated[RoutingConfig, F("API keys, tier header, model aliases")] = RoutingConfig()
    policy: Annotated[PolicyConfig, F("routing policy")] = PolicyConfig()
    timeouts: Annotated[Timeouts, F("upstream timeouts (per-tier overrides in tiers[].timeouts)")] = (
        Timeouts()
    )
    models: Annotated[ModelsConfig, F("latency and length models")] = ModelsConfig()
    admin: Annotated[AdminConfig, F("admin endpoints")] = AdminConfig()
    retries: Annotated[RetryConfig, F("failover before the first byte")] = RetryConfig()
    health: Annotated[HealthConfig, F("health probes and ejection")] = HealthConfig()
    autoscale: Annotated[AutoscaleConfig, F("per-tier autoscaling", restart=True)] = AutoscaleConfig()
    state: Annotated[StateConfig, F("state shared with other router replicas")] = StateConfig()
    source: str = "<memory>"  # the file this came from (not a YAML field)
    # derived: values.Tier per tier (config order), ranked by tightness (0 = tightest)
    tier_values: tuple[Tier, ...] = field(init=False, repr=False, compare=False)
    tier_by_name: Mapping[str, Tier] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = _rank(self.tiers)
        object.__setattr__(self, "tier_values", values)
        object.__setattr__(self, "tier_by_name", MappingProxyType({t.name: t for t in values}))

    def tier(self, name: str) -> Tier:
        return self.tier_by_name[name]

    def timeouts_for(self, tier: str) -> Timeouts:
        """The upstream timeouts for requests of ``tier`` (top level merged with overrides)."""
        spec = next((t for t in self.tiers if t.name == tier), None)
        return self.timeouts.merged(spec.timeouts if spec else None)

    def with_source(self, source: str) -> RouterConfig:
        return replace(self, source=source)
