"""Real vLLM, no router: the stream shapes the router relies on, ``slorouter profile`` on a
real server, and the calibration loop of the real-vLLM issue — a profile measured on real
vLLM makes the simulated engine predict vLLM's mean inter-token latency within 20 %."""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from slorouter import cli
from slorouter.models.profile import StepProfile
from slorouter.simengine.server import serve_engines
from tests.e2e.conftest import RealVllm

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(900)]  # includes install + start on a clean CI
LEVELS = "1,4,8,16"
# On the 2-core CI host a few seconds of other work made one level of vLLM 25 % slower than
# its curve (19.9 / 35.6 / 30.1 / 42.9 ms at 1 / 4 / 8 / 16 streams) and pulled the fit with
# it; the profiler's --repeat keeps each level's fastest pass (slorouter/tools/profile.py).
REAL_PASSES, SIM_PASSES = "3", "2"


async def _stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


async def test_vllm_stream_shapes_the_router_relies_on(vllm_servers: RealVllm) -> None:
    url = vllm_servers.urls[0]
    body: dict[str, Any] = {
        "model": vllm_servers.model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 6,
        "ignore_eos": True,
        "stream": True,
    }
    plain = await _stream(url, body)
    assert plain[0]["choices"][0]["delta"].get("role") == "assistant"
    assert all("usage" not in c for c in plain)
    assert "system_fingerprint" in plain[-1]  # the last token chunk carries it when no usage follows

    with_usage = await _stream(url, {**body, "stream_options": {"include_usage": True}})
    *tokens, last = with_usage
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6
    assert all("usage" not in c for c in tokens)  # no "usage": null on regular chunks
    assert "system_fingerprint" in last and all("system_fingerprint" not in c for c in tokens)

    cont = await _stream(
        url, {**body, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    )
    counts = [c["usage"]["completion_tokens"] for c in cont]
    assert counts[0] == 0 and counts[-1] == 6 and counts == sorted(counts)


async def _running(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return sum(
        float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith("vllm:num_requests_running{")
    )


async def test_a_client_disconnect_aborts_the_request_in_vllm(vllm_servers: RealVllm) -> None:
    url = vllm_servers.urls[1]
    body = {
        "model": vllm_servers.model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=body) as r:
            seen = 0
            async for line in r.content:
                seen += line.startswith(b"data: ")
                if seen >= 5:
                    break
            assert await _running(s, url) == 1
            r.close()  # drop the connection mid-stream
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0  # the ~895 tokens left would take > 8 s at >= 9 ms per step
        while await _running(s, url) != 0:
            assert loop.time() < deadline, "vLLM still runs the request after the client left"
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def real_profile(vllm_servers: RealVllm, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("profile")
    out, raw = d / "vllm.json", d / "vllm_raw.json"
    args = ["profile", "--target", vllm_servers.urls[0], "--out", str(out), "--raw", str(raw)]
    assert cli.main([*args, "--concurrency", LEVELS, "--repeat", REAL_PASSES, "--quiet"]) == 0
    return out, raw


def test_profile_of_real_vllm(real_profile: tuple[Path, Path]) -> None:
    out, raw_path = real_profile
    prof = StepProfile.load(out)
    raw = json.loads(raw_path.read_text())
    assert prof.source == "measured" and prof.engine == "vllm" and prof.model == "tiny"
    assert prof.kv_capacity_tokens == 16384  # read from vLLM's cache_config_info (256 MiB of KV)
    assert prof.step.c_batch_s + prof.step.c_kv_s > 0  # steps get longer with load
    itl = [p.mean_itl_s for p in prof.points]
    assert [p.concurrency for p in prof.points] == [1, 4, 8, 16]
    assert itl[-1] > 1.2 * itl[0], itl
    # What the client measured is what vLLM itself accounts: the median over levels within
    # 10 %, every level within 2x. (On a loaded host one level of 8 requests can be off by
    # ~1.9x — seen once at concurrency 1 while a soak test shared the 2 cores — so a
    # per-level 10 % bound would test the host, not the tool.)
    ratios = []
    for lv in raw["levels"]:
        assert lv["errors"] == 0 and len(lv["pass_mean_itl_s"]) == int(REAL_PASSES)
        assert lv["mean_itl_s"] == min(lv["pass_mean_itl_s"])
        ratio = lv["engine_reported_itl_s"] / lv["mean_itl_s"]
        assert 0.5 < ratio < 2.0, lv
        ratios.append(ratio)
    assert statistics.median(ratios) == pytest.approx(1.0, rel=0.10), ratios


async def test_simulated_engine_calibrated_on_real_vllm_predicts_its_itl(
    real_profile: tuple[Path, Path], tmp_path: Path
) -> None:
    out, raw_path = real_profile
    real = json.loads(raw_path.read_text())["levels"]
    sim_out, sim_raw = tmp_path / "sim.json", tmp_path / "sim_raw.json"
    async with serve_engines(1, profile=StepProfile.load(out), model="tiny") as fleet:
        args = ["profile", "--target", fleet.urls[0], "--out", str(sim_out), "--raw", str(sim_raw)]
        extra = ["--concurrency", LEVELS, "--repeat", SIM_PASSES, "--quiet"]
        assert await asyncio.to_thread(cli.main, [*args, *extra]) == 0
    sim = json.loads(sim_raw.read_text())["levels"]
    rows = []
    for r, s in zip(real, sim, strict=True):
        err = s["mean_itl_s"] / r["mean_itl_s"] - 1
        rows.append((r["concurrency"], r["mean_itl_s"] * 1e3, s["mean_itl_s"] * 1e3, 100 * err))
    print(
        "\nvLLM's passes per level (ms):", [[round(x * 1e3, 1) for x in r["pass_mean_itl_s"]] for r in real]
    )
    print("concurrency  vLLM ITL ms  sim ITL ms  error %")
    for c, a, b, e in rows:
        print(f"{c:11d}  {a:11.1f}  {b:10.1f}  {e:+7.1f}")
    assert all(abs(e) <= 20 for *_, e in rows), rows
