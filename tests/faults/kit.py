"""Faulty backends for the fault-injection suite, all real sockets on 127.0.0.1:

* :class:`EngineProcess` — a simulated engine in its own process (``slorouter sim``),
  which a test can SIGKILL mid-stream and start again on the same port;
* :func:`hang_server` — accepts connections and reads, never answers (a wedged engine);
* :func:`status_server` — answers every generation with a fixed status (500, 429) and
  ``/health`` with 200 (an engine that is up but failing);
* :func:`refused_port` — a port nobody listens on (connection refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
from aiohttp import web

from tests.servekit import serve_app


def free_port() -> int:
    """A free port for a child process to bind, below Linux's ephemeral range (32768+), so
    no outgoing connection can take it between this check and the child's bind."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999")


def refused_port() -> int:
    """A port that refuses connections (bound then released; nothing listens)."""
    return free_port()


class EngineProcess:
    """``slorouter sim --engines 1`` on a fixed port, in a child process."""

    def __init__(self, port: int | None = None, profile: str = "cpu-tiny", seed: int = 7) -> None:
        self.port = port or free_port()
        self.profile = profile
        self.seed = seed
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        cmd = [sys.executable, "-m", "slorouter.cli", "sim", "--engines", "1", "--base-port", str(self.port)]
        cmd += ["--profile", self.profile, "--seed", str(self.seed)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
        )

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as s:
            while True:
                assert self.proc is not None and self.proc.poll() is None, "the engine process died"
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"engine on {self.port} did not start")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye, open streams break mid-way."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    async def running(self) -> int:
        """``vllm:num_requests_running`` as the engine reports it."""
        async with aiohttp.ClientSession() as s, s.get(self.url + "/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith("vllm:num_requests_running"):
                return int(float(line.rsplit(" ", 1)[1]))
        raise AssertionError("no vllm:num_requests_running in the engine's metrics")


@asynccontextmanager
async def hang_server() -> AsyncIterator[tuple[str, list[int]]]:
    """(url, [connections accepted]): reads forever, never writes a byte."""
    accepted = [0]
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        for w in writers:
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@asynccontextmanager
async def status_server(status: int) -> AsyncIterator[tuple[str, list[int]]]:
    """(url, [generation requests seen]): /health 200, every POST answered ``status``."""
    seen = [0]

    async def gen(request: web.Request) -> web.Response:
        seen[0] += 1
        await request.read()
        body = orjson.dumps({"error": {"message": f"injected {status}", "type": "x", "code": status}})
        headers = {"Retry-After": "1"} if status == 429 else None
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", ok)
    app.router.add_post("/{tail:.*}", gen)
    async with serve_app(app) as base:
        yield base, seen
