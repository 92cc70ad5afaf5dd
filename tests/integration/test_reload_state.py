"""Warm restart: the learned latency and length models are saved on shutdown (and on
demand, and periodically) to ``models.state_file`` and loaded by the next router."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest
import yaml

from slorouter.config import load_config
from slorouter.models.latency import OnlineLatency
from slorouter.models.profile import StepProfile
from slorouter.models.static import LinearStep
from slorouter.simengine.server import serve_engines
from tests.faults.test_faults import poll
from tests.integration.test_reload import ENV, TOKEN, admin, raw_config, write
from tests.routerkit import run_router

CHAT = {"model": "sim-llama", "messages": [{"role": "user", "content": "warm me up"}], "stream": True}


async def test_models_survive_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    caplog.set_level(logging.INFO, logger="slorouter")
    fast = StepProfile(  # fast steps: responses long enough for the latency model's windows
        name="fast",
        engine="vllm",
        model="tiny",
        source="default",
        step=LinearStep(c0_s=0.0005, c_batch_s=0.0001, c_kv_s=0.0, c_prefill_s=1e-6),
        max_num_seqs=64,
        kv_capacity_tokens=65_536,
        max_batched_tokens=2048,
    )
    async with serve_engines(2, profile=fast) as fleet:
        cfg_file = tmp_path / "conf" / "router.yaml"
        cfg_file.parent.mkdir()
        write(
            cfg_file,
            raw_config(
                fleet.urls,
                ["e0", "e1"],
                models={"state_file": "../state/models.json", "state_save_interval_s": 0.2},
            ),
        )
        state = tmp_path / "state" / "models.json"
        async with run_router(load_config(cfg_file)) as router:
            async with aiohttp.ClientSession() as s:
                for i in range(8):
                    body = {**CHAT, "max_tokens": 300 + i, "ignore_eos": True}
                    async with s.post(router.url + "/v1/chat/completions", json=body) as r:
                        assert r.status == 200
                        await r.read()
            latency = router.services.tracker.latency
            assert isinstance(latency, OnlineLatency)
            await poll(state.exists, 3.0)  # the periodic save
            status, body = await admin(router.url, "/admin/save-state")
            assert status == 200 and body["saved"] == str(state)
            seen = {b: latency.describe(b)["observations"] for b in ("e0", "e1")}
            lengths = router.services.lengths
            bound = lengths.bound("standard")
        assert min(seen.values()) > 0
        async with run_router(load_config(cfg_file)) as again:
            lat2 = again.services.tracker.latency
            assert isinstance(lat2, OnlineLatency)
            assert {b: lat2.describe(b)["observations"] for b in ("e0", "e1")} == seen
            assert again.services.lengths.bound("standard") == bound
            for b in ("e0", "e1"):
                assert lat2.step_time(b, 4, 2000) == pytest.approx(latency.step_time(b, 4, 2000), rel=1e-6)
        assert "warm start from" in caplog.text

        state.write_text("{corrupt")
        caplog.clear()
        async with run_router(load_config(cfg_file)) as blind:
            assert blind.services.tracker.latency.describe("e0")["observations"] == 0  # type: ignore[attr-defined]
        assert "ignoring the model state" in caplog.text
        assert yaml.safe_load(cfg_file.read_text())["models"]["state_file"] == "../state/models.json"
