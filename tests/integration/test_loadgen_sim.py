"""The load generator against simulated vLLM engines (real sockets, ephemeral ports).

Expected attainment is known by construction from the engine's step model: the
``h100-8b`` profile's step is at least 7 ms (c0) and, lightly loaded, ~7.2 ms.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadgen import results
from loadgen.runner import run_workload
from loadgen.workload import parse_workload
from slorouter.simengine.server import serve_engines

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


def _w(tier: dict[str, Any], prompt: int, output: int, requests: int, rate: float = 8.0) -> Any:
    return parse_workload(
        {
            "tiers": [{"name": "t", **tier}],
            "mix": [{"tier": "t", "share": 1, "prompt_tokens": prompt, "output_tokens": output}],
            "arrival": {"process": "constant", "rate": rate},
            "requests": requests,
        },
        "sim-test",
        REPO,
    )


async def test_step_well_under_tpot_attains_everything() -> None:
    async with serve_engines(1, profile="h100-8b") as fleet:
        res = await run_workload(
            _w({"class": "latency", "ttft_ms": 1000, "tpot_ms": 100}, 64, 32, 10), fleet.urls[0]
        )
    doc = results.from_run(res)
    t = doc["tiers"]["t"]
    assert t["arrivals"] == 10 and t["attainment"] == 1.0
    assert t["attainment_dslo"] == 1.0 and t["attainment_mean_tpot"] == 1.0
    # the prompt synthesis hits the engine's token count exactly, and ignore_eos fixes the output
    assert doc["input_lens"] == [64] * 10 and doc["output_lens"] == [32] * 10
    assert 7.0 <= doc["median_tpot_ms"] < 50.0  # the engine's step (>= 7 ms), seen from the client


async def test_tpot_tighter_than_any_step_attains_nothing() -> None:
    # TPOT 2 ms < the 7 ms minimum step: mean TPOT always misses, and with TTFT 300 ms the
    # last of 200 tokens (>= 199 steps = 1.39 s after the first) is past 0.3 + 199 * 0.002 s.
    async with serve_engines(1, profile="h100-8b") as fleet:
        res = await run_workload(
            _w({"class": "latency", "ttft_ms": 300, "tpot_ms": 2}, 32, 200, 4), fleet.urls[0]
        )
    t = results.from_run(res)["tiers"]["t"]
    assert t["status"]["ok"] == 4
    assert t["attainment"] == 0.0 and t["attainment_dslo"] == 0.0 and t["attainment_mean_tpot"] == 0.0


async def test_byte_scanner_agrees_with_the_openai_client() -> None:
    """Our byte scan and the official client parse the same streamed answer alike."""
    import openai

    w = _w({"class": "latency", "ttft_ms": 1000, "tpot_ms": 100}, 50, 40, 1)
    async with serve_engines(1, profile="h100-8b") as fleet:
        res = await run_workload(w, fleet.urls[0])
        client = openai.AsyncOpenAI(base_url=fleet.urls[0] + "/v1", api_key="none")
        try:
            stream = await client.chat.completions.create(
                model="sim-llama",
                messages=[{"role": "user", "content": "hello " * 43}],
                max_tokens=40,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            with_choices = 0
            usage = None
            async for chunk in stream:
                if chunk.choices:
                    with_choices += 1
                if chunk.usage is not None:
                    usage = chunk.usage
        finally:
            await client.close()
    rec = res.records[0]
    assert usage is not None and rec.usage_completion == usage.completion_tokens == 40
    assert rec.usage_prompt == usage.prompt_tokens == 50
    assert len(rec.chunks) == with_choices


async def test_cli_run_report_and_plots_with_the_shipped_smoke_workload(tmp_path: Path) -> None:
    out, plots = tmp_path / "smoke.json", tmp_path / "plots"
    async with serve_engines(1, profile="h100-8b") as fleet:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadgen.cli", "run", "--target", fleet.urls[0],
            "--workload", str(REPO / "config/workloads/smoke.yaml"), "--duration", "2", "--rate", "4",
            "--out", str(out), "--plot", str(plots),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 45)
    assert proc.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "SLO attainment per tier" in text and "interactive" in text
    doc = orjson.loads(out.read_bytes())
    assert doc["completed"] > 0 and doc["failed"] == 0
    assert set(doc["tiers"]) <= {"interactive", "standard", "batch"}
    assert sorted(p.name for p in plots.iterdir()) == [
        "attainment.png",
        "timeline.png",
        "tpot_cdf.png",
        "ttft_cdf.png",
    ]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadgen.cli", "report", str(out), stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and "SLO attainment per tier" in stdout.decode()


async def test_cli_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tiers: [{name: a, class: latency, ttft_ms: 100, tpot_ms: 0}]\nmix: [{tier: a, share: 1}]\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadgen.cli", "run", "--workload", str(bad), "--requests", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "bad.yaml: tiers[0].tpot_ms: must be > 0, got 0" in stderr.decode()
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        "tiers: [{name: a, class: latency, ttft_ms: 100, tpot_ms: 10}]\nmix: [{tier: a, share: 1}]\n"
        "arrival: {process: constant, rate: 1}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadgen.cli", "run", "--workload", str(ok), "--requests", "1",
        "--target", "http://127.0.0.1:9", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and "cannot reach http://127.0.0.1:9" in stderr.decode()


async def test_cli_sweep_writes_goodput_and_a_plot(tmp_path: Path) -> None:
    w = tmp_path / "w.yaml"
    w.write_text(
        "tiers:\n  - {name: loose, class: latency, ttft_ms: 2000, tpot_ms: 100}\n"
        "  - {name: impossible, class: latency, ttft_ms: 100, tpot_ms: 1}\n"
        "mix:\n  - {tier: loose, share: 1, prompt_tokens: 32, output_tokens: 16}\n"
        "  - {tier: impossible, share: 1, prompt_tokens: 32, output_tokens: 60}\n"
        "arrival: {process: poisson, rate: 1}\nmodel: auto\n"
    )
    out = tmp_path / "sweep.json"
    async with serve_engines(1, profile="h100-8b") as fleet:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadgen.cli", "sweep", "--target", fleet.urls[0], "--workload", str(w),
            "--rates", "8,4", "--requests", "6", "--cooldown", "0", "--out", str(out), "--plot", str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode == 0, stderr.decode()
    doc = orjson.loads(out.read_bytes())
    assert [p["rate"] for p in doc["points"]] == [4, 8]
    g = doc["goodput"]["90"]
    assert g["per_tier"]["loose"] == 8 and g["per_tier"]["impossible"] is None and g["all_tiers"] is None
    assert (tmp_path / "attainment_vs_rate.png").stat().st_size > 0
    assert "every tier (decides)" in stdout.decode()


async def test_priority_due_sends_each_calls_due_time() -> None:
    """``priority: due``: vLLM's priority field carries the due time — engines with priority
    scheduling serve it, fcfs engines refuse the non-zero priority (as vLLM does)."""
    from loadgen.client import BEST_EFFORT_PRIORITY, due_priority
    from loadgen.tiers import TierSpec

    lat = TierSpec("chat", "latency", ttft_ms=2000, tpot_ms=100)
    assert due_priority(lat, 1.5) == 3500
    assert due_priority(TierSpec("tools", "deadline", deadline_ms=20000), 1.5, 0.2) == 21500
    assert due_priority(TierSpec("agents", "workflow", deadline_ms=60000), 9.0, 1.25) == 61250
    assert due_priority(TierSpec("agents", "workflow", deadline_ms=60000), 9.0) == 69000
    assert due_priority(TierSpec("bulk", "best_effort"), 9.0) == BEST_EFFORT_PRIORITY

    def w() -> Any:
        return parse_workload(
            {
                "tiers": [{"name": "t", "class": "latency", "ttft_ms": 1000, "tpot_ms": 100}],
                "mix": [{"tier": "t", "share": 1, "prompt_tokens": 32, "output_tokens": 8}],
                "arrival": {"process": "constant", "rate": 20},
                "requests": 6,
                "priority": "due",
            },
            "sim-test",
            REPO,
        )

    for scheduling, ok in (("priority", 6), ("fcfs", 0)):
        async with serve_engines(1, profile="h100-8b", scheduling=scheduling) as fleet:
            res = await run_workload(w(), fleet.urls[0])
        status = results.from_run(res)["tiers"]["t"]["status"]
        assert status.get("ok", 0) == ok, (scheduling, status)
