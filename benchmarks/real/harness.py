"""The real router (``build_app``, as ``slorouter serve`` runs it) in this process, on an
ephemeral port of 127.0.0.1, in front of the given vLLM servers; every finished request's
:class:`~slorouter.values.Outcome` is collected for the benchmark to judge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from slorouter.app import build_app, runner_for
from slorouter.config import parse_config
from slorouter.config.model import RouterConfig
from slorouter.http.context import SERVICES, Services
from slorouter.values import Outcome


def config(
    urls: Sequence[str],
    policy: str,
    tiers: list[dict[str, Any]] | None = None,
    backend_tiers: Sequence[str] | None = None,
    profile: Path | None = None,
    state_file: Path | None = None,
    params: Mapping[str, Any] | None = None,
) -> RouterConfig:
    tiers = tiers or [{"name": "standard", "class": "latency", "ttft_ms": 5000, "tpot_ms": 500}]
    names = list(backend_tiers or [tiers[0]["name"]] * len(urls))
    models: dict[str, Any] = {}
    if profile is not None:
        models["profile"] = str(profile)
    if state_file is not None:
        models["state_file"] = str(state_file)
    raw = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "tiers": tiers,
        "backends": [
            {"name": f"e{i}", "url": u, "engine": "vllm", "tier": names[i]} for i, u in enumerate(urls)
        ],
        "routing": {"default_tier": tiers[0]["name"], "allow_anonymous": True},
        "policy": {"kind": policy, "params": dict(params or {})},
        "models": models,
    }
    return parse_config(raw, "<bench_real_policies>")


@dataclass
class Router:
    url: str
    services: Services
    outcomes: list[Outcome]


@asynccontextmanager
async def router(cfg: RouterConfig) -> AsyncIterator[Router]:
    """The real router (``build_app``, as ``slorouter serve`` runs it) on an ephemeral port;
    every finished request's :class:`Outcome` is collected."""
    app = build_app(cfg)
    runner = runner_for(app, cfg)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        svc = app[SERVICES]
        got: list[Outcome] = []
        svc.tracker.add_listener(got.append)
        yield Router(f"http://127.0.0.1:{port}", svc, got)
    finally:
        await runner.cleanup()
