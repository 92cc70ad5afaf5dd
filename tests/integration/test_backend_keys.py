"""Engines that require an API key (vLLM ``--api-key``): ``backends[i].api_key_env`` names
the variable holding it, and every request the router makes to such an engine carries
it — forwarded requests (the real openai client, streaming and not), the model list,
pass-through routes, health probes. An unset variable is a config error that names the
file and the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from aiohttp import web

from slorouter.config import ConfigError, load_config
from slorouter.simengine.server import serve_engines
from tests.faults.test_faults import poll
from tests.routerkit import run_router
from tests.servekit import serve_app

KEY = "sim-engine-secret-1"
VAR = "SIM_ENGINE_KEY"
MODEL = "sim-llama"
HEALTH = {"interval_s": 0.05, "timeout_s": 0.5, "failures": 2, "successes": 1, "cooldown_s": 0.2}


def write_config(tmp_path: Path, urls: list[str], health: dict[str, Any] | None = None) -> Path:
    raw: dict[str, Any] = {
        "tiers": [{"name": "chat", "class": "latency", "ttft_ms": 5000, "tpot_ms": 200}],
        "backends": [{"name": f"e{i}", "url": u, "api_key_env": VAR} for i, u in enumerate(urls)],
        "routing": {"allow_anonymous": True},
    }
    if health:
        raw["health"] = health
    path = tmp_path / "keyed.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


async def test_the_simulated_engine_requires_its_key_as_vllm_does() -> None:
    async with serve_engines(1, profile="cpu-tiny", api_key=KEY) as fleet:
        url = fleet.urls[0]
        bare = openai.AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bare.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        await bare.close()
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/v1/models") as r:  # no header at all
                assert r.status == 401 and await r.json() == {"error": "Unauthorized"}
            async with s.get(url + "/health") as r:  # open, as vLLM's
                assert r.status == 200
        keyed = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        got = await keyed.completions.create(model=MODEL, prompt="once upon", max_tokens=3)
        assert got.usage is not None and got.usage.completion_tokens == 3
        await keyed.close()


async def test_requests_through_the_router_carry_the_engines_key(tmp_path: Path) -> None:
    async with serve_engines(2, profile="cpu-tiny", api_key=KEY) as fleet:
        cfg = load_config(write_config(tmp_path, fleet.urls), env={VAR: KEY})
        assert all(b.api_key == KEY for b in cfg.backends)
        assert KEY not in repr(cfg)  # never in logs
        async with run_router(cfg) as router:
            # the client's own key is the router's business: the engine gets its own
            client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="client-key", max_retries=0)
            try:
                for _ in range(4):  # both engines (round robin)
                    chat = await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=5
                    )
                    assert chat.usage is not None and chat.usage.completion_tokens == 5
                stream = await client.completions.create(
                    model=MODEL,
                    prompt="a b c",
                    max_tokens=6,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [c async for c in stream]
                assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
                listed = [m.id for m in (await client.models.list()).data]
                assert MODEL in listed  # the router asked the engines for their models, with the key
            finally:
                await client.close()
            assert all(e.counters.requests >= 2 for e in fleet.engines)
            # a pass-through /v1 route: the engine answers 404 (not 401): the key went along
            body = {"model": MODEL, "input": "x"}
            async with aiohttp.ClientSession() as s, s.post(router.url + "/v1/embeddings", json=body) as r:
                assert r.status == 404, await r.text()


@asynccontextmanager
async def keyed_health(key: str) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A server whose /health answers 503 unless the bearer key is right; counts both."""
    seen = {"with_key": 0, "without": 0}

    async def health(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == f"Bearer {key}"
        seen["with_key" if ok else "without"] += 1
        return web.Response(text="ok") if ok else web.Response(status=503)

    app = web.Application()
    app.router.add_get("/health", health)
    async with serve_app(app) as base:
        yield base, seen


async def test_health_probes_carry_the_key(tmp_path: Path) -> None:
    async with keyed_health(KEY) as (url, seen):
        cfg = load_config(write_config(tmp_path, [url], health=HEALTH), env={VAR: KEY})
        async with run_router(cfg) as router:
            await poll(lambda: seen["with_key"] >= 5, 5.0)
            assert seen["without"] == 0
            assert "e0" in router.services.tracker.health.healthy


@pytest.mark.parametrize("env", [{}, {VAR: ""}])
def test_an_unset_key_variable_is_a_config_error_naming_file_and_field(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = write_config(tmp_path, ["http://127.0.0.1:9", "http://127.0.0.1:10"])
    with pytest.raises(ConfigError) as e:
        load_config(path, env=env)
    assert e.value.lines() == [
        f"{path}: backends[{i}].api_key_env: environment variable {VAR} is not set (or empty)" for i in (0, 1)
    ]
