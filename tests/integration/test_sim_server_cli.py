"""`slorouter sim` as a user runs it: starts, serves, stops on SIGTERM; bad flags explain."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import aiohttp
import pytest

from slorouter.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sim_command_serves_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "slorouter.cli",
        "sim",
        "--engines",
        "1",
        "--base-port",
        str(port),
        "--profile",
        "cpu-tiny",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    async with s.get(url + "/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, "sim did not come up"
                await asyncio.sleep(0.05)
            body = {"model": "sim-llama", "prompt": "hello", "max_tokens": 2, "ignore_eos": True}
            async with s.post(url + "/v1/completions", json=body) as r:
                assert (await r.json())["usage"]["completion_tokens"] == 2
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert url in err and "stopped" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", "no-such-profile"], "--profile: unknown profile 'no-such-profile'"),
        (["--engines", "0"], "--engines"),
        (["--base-port", "65535", "--engines", "2"], "--base-port"),
        (["--profile", "/nonexistent/p.json"], "no such file"),
        (["--engine", "tgi", "--api-key", "k"], "--api-key: give a non-empty key, with --engine vllm"),
        (["--api-key", ""], "--api-key"),
    ],
)
def test_bad_flags_say_what_to_do(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", *argv]) == 2
    assert message in capsys.readouterr().err


def test_busy_port_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["sim", "--engines", "1", "--base-port", str(port)]) == 1
    assert "--base-port" in capsys.readouterr().err
