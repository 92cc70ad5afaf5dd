"""The upstream HTTP client: one pooled aiohttp session for all engines, header
filtering (hop-by-hop headers never cross the proxy), and per-tier timeouts (the idle
timer after the first byte: :func:`arm_idle_timeout`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from multidict import CIMultiDict

from slorouter.state.backends import Backend

# RFC 9110 §7.6.1 connection-specific headers, plus ones the proxy sets itself.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
# the body goes up as the router read it (decoded), so its length/encoding headers are the router's
_NOT_FORWARDED_UP: Final = HOP_BY_HOP | {
    "host",
    "content-length",
    "content-encoding",
    "expect",
    "authorization",
    "x-api-key",
    "cookie",
}
_NOT_FORWARDED_DOWN: Final = HOP_BY_HOP | {"content-length", "content-encoding", "server", "date"}


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0  # TCP connect to the engine
    first_byte_s: float = 300.0  # request sent -> first body byte (includes engine queueing)
    idle_s: float = 120.0  # longest silence between two reads of a response


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    default: Timeouts = Timeouts()
    per_tier: Mapping[str, Timeouts] = field(default_factory=dict)
    max_attempts: int = 3  # backends tried for one request (failover before the first byte)
    backoff_s: float = 0.02  # base of the jittered exponential backoff between attempts
    backoff_max_s: float = 1.0  # longest pause between attempts
    max_response_bytes: int = 64 * 1024 * 1024  # non-streaming responses

    def timeouts(self, tier: str) -> Timeouts:
        return self.per_tier.get(tier, self.default)


def _filtered(headers: Iterable[tuple[str, str]], drop: frozenset[str]) -> CIMultiDict[str]:
    connection_listed: set[str] = set()
    pairs = list(headers)
    for k, v in pairs:
        if k.lower() == "connection":
            connection_listed.update(t.strip().lower() for t in v.split(","))
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in pairs:
        lk = k.lower()
        if lk in drop or lk in connection_listed:
            continue
        out.add(k, v)
    return out


def upstream_headers(client_headers: Iterable[tuple[str, str]], api_key: str | None) -> CIMultiDict[str]:
    """Headers for the engine: the client's end-to-end headers minus credentials
    (the router's API key is not the engine's), plus the backend's own key if any."""
    h = _filtered(client_headers, _NOT_FORWARDED_UP)
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def auth_headers(backend: Backend) -> dict[str, str] | None:
    """The headers of the router's own requests to a backend (health probes, model
    lists): its API key, if it has one."""
    return {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else None


def downstream_headers(engine_headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    return _filtered(engine_headers, _NOT_FORWARDED_DOWN)


def make_session(limit: int = 0, keepalive_s: float = 4.0) -> aiohttp.ClientSession:
    """One session for every engine; ``limit=0``: no cap on pooled connections
    (engines do their own admission; a cap here would queue invisibly). Idle pooled
    connections are closed after ``keepalive_s``: below the engine's own idle timeout
    (vLLM's uvicorn closes at 5 s), so the router does not send on a connection the
    engine is closing."""
    connector = aiohttp.TCPConnector(
        limit=limit, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=keepalive_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


def arm_idle_timeout(up: aiohttp.ClientResponse, idle_s: float) -> None:
    """From now on, every silence of the engine longer than ``idle_s`` fails the next read
    of ``up`` with :class:`aiohttp.ServerTimeoutError`.

    The one touch of aiohttp's client internals: the connection protocol's per-read
    timer (``ResponseHandler.read_timeout``, re-armed by each arriving chunk, as
    ``ClientTimeout(sock_read=...)`` sets it when a request starts). The public
    ``sock_read`` cannot be used: it would also bound the wait for the headers and first
    byte, which ``first_byte_s`` (usually longer) governs.
    ``tests/integration/test_aiohttp_private.py`` fails if aiohttp changes that timer
    (a silent engine must fail the read after ``idle_s``)."""
    conn = up.connection
    if conn is None:  # the body is already complete: nothing is left to wait for
        return
    proto = conn.protocol
    if proto is None:
        return
    proto.read_timeout = idle_s
    proto.start_timeout()
