"""The router and simulated engines as child processes on 127.0.0.1, for the benchmarks
that drive the whole stack (:mod:`benchmarks.fuzz`, :mod:`benchmarks.soak`): start
``slorouter serve`` and read its port, wait until a port listens, stop every child started
(only those), and read what the router still holds from its ``/metrics``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

Child = subprocess.Popen[bytes]


def start_router(
    config: Path, *, log_level: str, stderr: IO[bytes] | int, env: Mapping[str, str] | None = None
) -> Child:
    """``slorouter serve --config CONFIG --port 0``; its port: :func:`router_port`."""
    cmd = [sys.executable, "-m", "slorouter.cli", "serve", "--config", str(config)]
    cmd += ["--port", "0", "--log-level", log_level]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env)


def router_port(router: Child) -> int:
    """The port a router from :func:`start_router` listens on (the first line it prints)."""
    assert router.stdout is not None
    line = router.stdout.readline()
    m = re.search(rb":(\d+)\s*$", line)
    if not m:
        raise RuntimeError(f"slorouter serve did not start: {line!r}")
    return int(m.group(1))


def wait_listening(port: int, proc: Child, timeout_s: float = 20.0) -> None:
    """Return once something accepts connections on ``port``; raise if ``proc`` (the child
    that should listen there) exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {proc.returncode} (port taken?)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def stop_all(procs: Sequence[Child], grace_s: float = 10.0) -> None:
    """SIGTERM every child still running (the last started first), SIGKILL any that has not
    exited ``grace_s`` later, and close their stdout pipes."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    for p in procs:
        if p.stdout is not None:
            p.stdout.close()


def busy_series(metrics_text: str) -> list[str]:
    """The in-flight and queued series of a router's /metrics that are not zero."""
    return [
        f"{s.name}{s.labels} {s.value}"
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name in ("slorouter_backend_inflight_requests", "slorouter_queue_waiting_requests") and s.value
    ]
