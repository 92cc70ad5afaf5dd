"""A real ``redis-server`` for the replica tests: started on a free 127.0.0.1 port in a
temporary directory, without persistence, stopped by its PID.

``scripts/test.sh`` installs the server when it is missing (``scripts/ensure_redis.sh``,
Debian's ``redis-server`` package). When it still cannot be found, a test that asks for
one **fails** under CI (``CI`` set) and is **skipped** with the reason otherwise.

A test can kill the server (``SIGKILL``: the store is gone), freeze it (``SIGSTOP``: the
store hangs — connections open, no answers) and start it again on the same port.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "run scripts/ensure_redis.sh (installs Debian's redis-server) or put redis-server on PATH"


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def redis_binary() -> str:
    """Path of ``redis-server``; fails the test under CI, skips it otherwise, when absent."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if Path(p).is_file()), None
    )
    if found is None:
        if _ci():
            pytest.fail(f"redis-server is not installed, and CI needs the replica tests: {INSTALL_HINT}")
        pytest.skip(f"redis-server is not installed: {INSTALL_HINT}")
    return found


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: SIGTERM it when this process dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``), so a killed test run leaves no server behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    """True when a server on ``port`` answers PING (plain RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process (see module docs)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        assert self.proc is None, "already running"
        log = (self.dir / "redis.log").open("ab")
        opts = {
            "--port": str(self.port),
            "--bind": "127.0.0.1",
            "--dir": str(self.dir),
            "--save": "",  # no persistence: a restart starts empty
            "--appendonly": "no",
            "--daemonize": "no",
            "--logfile": "",  # to stdout, i.e. redis.log
        }
        self.proc = subprocess.Popen(
            [self.binary, *(x for kv in opts.items() for x in kv)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not _answers(self.port):
            if self.proc.poll() is not None:
                text = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                self.proc = None
                raise RuntimeError(f"redis-server exited at start (port {self.port}):\n{text}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the store vanishes without a word (its data with it: no persistence)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the store hangs (the kernel still accepts connections; nothing answers)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started server, stopped (by PID) and its directory removed on exit."""
    binary = redis_binary()
    with tempfile.TemporaryDirectory(prefix="slorouter-redis-") as d:
        server = RedisServer(binary, Path(d))
        for attempt in range(3):  # the free port can be taken between probe and bind
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        try:
            yield server
        finally:
            server.stop()
