"""Test helpers: start the real router in-process on an ephemeral 127.0.0.1 port in
front of real (simulated) engines. Not a mock: the same build_app and runner as
`slorouter serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from slorouter.app import build_app, runner_for
from slorouter.config import parse_config
from slorouter.config.model import RouterConfig
from slorouter.http.context import SERVICES, Services

DEFAULT_TIERS: list[dict[str, Any]] = [
    {"name": "interactive", "class": "latency", "ttft_ms": 1000, "tpot_ms": 50},
    {"name": "standard", "class": "latency", "ttft_ms": 5000, "tpot_ms": 150},
    {"name": "batch", "class": "best_effort"},
]


def router_config(
    urls: Sequence[str],
    *,
    policy: str = "round-robin",
    params: Mapping[str, Any] | None = None,
    tiers: list[dict[str, Any]] | None = None,
    backend_tiers: Sequence[str] | None = None,
    engine: str = "vllm",
    extra: Mapping[str, Any] | None = None,
) -> RouterConfig:
    raw = raw_router_config(
        urls, policy=policy, params=params, tiers=tiers, backend_tiers=backend_tiers, engine=engine, extra=extra
    )
    return parse_config(raw, "<test>")


def raw_router_config(
    urls: Sequence[str],
    *,
    policy: str = "round-robin",
    params: Mapping[str, Any] | None = None,
    tiers: list[dict[str, Any]] | None = None,
    backend_tiers: Sequence[str] | None = None,
    engine: str = "vllm",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The YAML-shaped config :func:`router_config` parses (to write it to a file)."""
    tiers = tiers or DEFAULT_TIERS
    names = [t["name"] for t in tiers]
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "tiers": tiers,
        "backends": [
            {
                "name": f"e{i}",
                "url": u,
                "engine": engine,
                "tier": (backend_tiers or names)[i % len(backend_tiers or names)],
            }
            for i, u in enumerate(urls)
        ],
        "routing": {"default_tier": names[min(1, len(names) - 1)], "allow_anonymous": True},
        "policy": {"kind": policy, "params": dict(params or {})},
    }
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    return raw


@dataclass
class RouterHandle:
    url: str
    app: web.Application

    @property
    def services(self) -> Services:
        return self.app[SERVICES]


@asynccontextmanager
async def run_router(cfg: RouterConfig) -> AsyncIterator[RouterHandle]:
    app = build_app(cfg)
    runner = runner_for(app, cfg)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield RouterHandle(f"http://127.0.0.1:{port}", app)
    finally:
        await runner.cleanup()
