"""``slorouter profile`` end to end against simulated engines with known step coefficients
(real sockets on 127.0.0.1, ephemeral ports; the CLI runs in a thread with its own loop)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from slorouter import cli
from slorouter.models.profile import StepProfile
from slorouter.models.static import LinearStep
from slorouter.simengine.server import serve_engines

KNOWN = StepProfile("known", LinearStep(c0_s=0.008, c_batch_s=0.002, c_kv_s=0.0, c_prefill_s=1.0e-4))


def profile_args(url: str, out: Path, *extra: str) -> list[str]:
    return ["profile", "--target", url, "--out", str(out), "--quiet", *extra]


@pytest.mark.timeout(60)
async def test_profile_of_a_simulated_vllm_recovers_its_step_model(tmp_path: Path) -> None:
    out, raw = tmp_path / "p.json", tmp_path / "raw.json"
    args = ["--concurrency", "1,2,8", "--prompt-tokens", "64", "--output-tokens", "24", "--raw", str(raw)]
    async with serve_engines(1, profile=KNOWN, model="sim-tiny") as fleet:
        code = await asyncio.to_thread(cli.main, profile_args(fleet.urls[0], out, *args))
        assert code == 0
        assert fleet.engines[0].model.num_running == 0
    prof = StepProfile.load(out)
    assert prof.source == "measured" and prof.engine == "vllm" and prof.model == "sim-tiny"
    assert [p.concurrency for p in prof.points] == [1, 2, 8]
    # the simulated engine's steps are c0 + c_batch·batch (+ prefill); timer lateness adds a little
    assert prof.step.c0_s == pytest.approx(0.008, rel=0.3)
    assert prof.step.c_batch_s == pytest.approx(0.002, rel=0.3)
    for p in prof.points:
        expected = 0.008 + 0.002 * p.concurrency
        assert p.mean_itl_s == pytest.approx(expected, rel=0.25), p
        assert p.p50_itl_s is not None and p.p90_itl_s is not None and p.p50_itl_s <= p.p90_itl_s
        assert p.mean_ttft_s is not None and p.mean_ttft_s > 0.008
    levels = json.loads(raw.read_text())["levels"]
    assert [lv["requests"] for lv in levels] == [8, 8, 16]  # default max(8, 2 x concurrency)
    assert abs(json.loads(raw.read_text())["prompt_tokens"] - 64) <= 2  # prompt length calibrated


@pytest.mark.timeout(60)
async def test_profile_of_a_simulated_tgi(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    args = ["--engine", "tgi", "--concurrency", "1,4", "--output-tokens", "16", "--requests-per-level", "4"]
    async with serve_engines(1, profile=KNOWN, engine="tgi") as fleet:
        assert await asyncio.to_thread(cli.main, profile_args(fleet.urls[0], out, *args)) == 0
    prof = StepProfile.load(out)
    assert prof.engine == "tgi" and [p.concurrency for p in prof.points] == [1, 4]
    assert prof.points[1].mean_itl_s > prof.points[0].mean_itl_s


@pytest.mark.timeout(60)
async def test_profile_with_only_the_final_usage(tmp_path: Path) -> None:
    """``--engine openai``: no vLLM extensions; tokens come from the final usage chunk."""
    out, raw = tmp_path / "p.json", tmp_path / "raw.json"
    args = [
        "--engine",
        "openai",
        "--concurrency",
        "1,4",
        "--output-tokens",
        "16",
        "--requests-per-level",
        "4",
    ]
    async with serve_engines(1, profile=KNOWN, eos_mean=1e9) as fleet:
        code = await asyncio.to_thread(cli.main, profile_args(fleet.urls[0], out, *args, "--raw", str(raw)))
        assert code == 0
    prof = StepProfile.load(out)
    assert prof.engine == "openai"
    for p in prof.points:
        assert p.mean_itl_s == pytest.approx(0.008 + 0.002 * p.concurrency, rel=0.3), p
    assert abs(json.loads(raw.read_text())["prompt_tokens"] - 100) <= 2  # calibrated from the final usage


def test_unreachable_target_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = cli.main(profile_args(f"http://127.0.0.1:{port}", tmp_path / "p.json"))
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}" in err and "is the server running?" in err
    assert not (tmp_path / "p.json").exists()


@pytest.mark.timeout(30)
async def test_a_wrong_model_name_reports_the_engine_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve_engines(1, profile=KNOWN, model="sim-tiny") as fleet:
        args = profile_args(fleet.urls[0], tmp_path / "p.json", "--model", "nope")
        code = await asyncio.to_thread(cli.main, args)
    assert code == 2
    assert "HTTP 404" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0,1", "a,b", ""])
def test_bad_concurrency_is_rejected_by_the_parser(bad: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(profile_args("http://127.0.0.1:1", tmp_path / "p.json", "--concurrency", bad))
    assert exc.value.code == 2


@pytest.mark.timeout(60)
async def test_repeat_keeps_each_levels_fastest_pass(tmp_path: Path) -> None:
    """A host whose other work slows the engine for a while: with ``--repeat 2`` the slowed
    passes (level 1's first, level 4's second) are measured, listed, and kept out of the
    levels and the fit."""
    args = [
        "--concurrency",
        "1,4",
        "--prompt-tokens",
        "64",
        "--output-tokens",
        "16",
        "--requests-per-level",
        "4",
    ]
    async with serve_engines(1, profile=KNOWN, model="sim-tiny") as fleet:  # how many requests one pass takes
        assert (
            await asyncio.to_thread(cli.main, profile_args(fleet.urls[0], tmp_path / "one.json", *args)) == 0
        )
        first_pass_ends = fleet.engines[0].counters.requests  # warm-up, prompt calibration, 4 + 4
    slow = LinearStep(
        c0_s=2 * KNOWN.step.c0_s, c_batch_s=2 * KNOWN.step.c_batch_s, c_kv_s=0.0, c_prefill_s=1.0e-4
    )
    out, raw = tmp_path / "p.json", tmp_path / "raw.json"
    async with serve_engines(1, profile=KNOWN, model="sim-tiny") as fleet:
        model = fleet.engines[0].model
        submit, seen = model.submit, [0]

        def disturbed_submit(*a: Any) -> None:  # steps twice as long in level 1's pass 1, level 4's pass 2
            seen[0] += 1
            disturbed = seen[0] <= first_pass_ends - 4 or seen[0] > first_pass_ends + 4
            model._coef = slow if disturbed else KNOWN.step
            submit(*a)

        model.submit = disturbed_submit  # type: ignore[method-assign]
        extra = ["--repeat", "2", "--raw", str(raw)]
        assert await asyncio.to_thread(cli.main, profile_args(fleet.urls[0], out, *args, *extra)) == 0
        assert seen[0] == first_pass_ends + 8  # then a second pass of 4 + 4 on the undisturbed engine
    levels = json.loads(raw.read_text())["levels"]
    prof = StepProfile.load(out)
    for lv, p in zip(levels, prof.points, strict=True):
        expected = 0.008 + 0.002 * lv["concurrency"]
        passes = lv["pass_mean_itl_s"]
        slow_pass, fast_pass = passes if lv["concurrency"] == 1 else passes[::-1]
        assert slow_pass == pytest.approx(2 * expected, rel=0.25), lv
        assert fast_pass == pytest.approx(expected, rel=0.25), lv
        assert lv["mean_itl_s"] == p.mean_itl_s == fast_pass  # the kept pass
    assert prof.step.c0_s == pytest.approx(0.008, rel=0.3)  # the fit saw the undisturbed steps only
    assert prof.step.c_batch_s == pytest.approx(0.002, rel=0.3)
