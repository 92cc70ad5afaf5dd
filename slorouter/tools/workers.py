"""``slorouter serve --workers N``: N full router processes on one port, one load picture.

The parent process creates the shared-memory segment (one slot per worker, see
:mod:`slorouter.proxy.shmstore`), reserves the port, and forks the workers. Each worker
is a whole router (its own event loop, tracker, policy, admission queue, upstream pool)
listening on the same address with ``SO_REUSEPORT`` (the kernel spreads connections over
the workers) and sharing its per-backend aggregates through its slot; the lowest live
worker is the leader (model state file). With ``state.sync.kind: redis`` the workers
publish to Redis instead, each as a replica of its own. ``/metrics``, answered by any
worker, is the whole host's (:mod:`slorouter.metrics.host`: a snapshot file per worker in
a private directory, a pipe per worker to ask for a fresh one).

Signals: SIGTERM / SIGINT to the parent are passed to every worker, which stop
accepting, let in-flight requests finish (``server.shutdown_grace_s``), withdraw their
row and exit; SIGHUP is passed on (each worker re-reads the config). A worker that dies
unexpectedly is started again (at most ``_MAX_RESTARTS`` times a minute).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

from slorouter.config.model import RouterConfig, SyncKind
from slorouter.metrics.host import HostShare
from slorouter.proxy.sharing import SharedState
from slorouter.proxy.shmstore import ShmSegment, ShmStore, holder_of, slot_size_for

log = logging.getLogger("slorouter")

_MAX_RESTARTS = 5  # per worker and minute
WORKER_TICK_S = 0.02  # workers of one host exchange rows every 20 ms (a memory copy)
WORKER_EVENT_S = 0.005  # and 5 ms after the last exchange when their own row changed
WORKER_TTL_S = 0.5  # a worker silent this long is dead: its share vanishes
FLEET_LIST_BYTES = 512 * 1024  # the run-time backend list in a row: ~250 bytes a backend, 512 tombstones


def workers_of(arg: str) -> int:
    """``--workers`` value: a positive integer or ``auto`` (one per usable core)."""
    if arg == "auto":
        return max(
            1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
    try:
        n = int(arg)
    except ValueError:
        raise ValueError(f"--workers {arg!r}: give a number of processes (>= 1) or auto") from None
    if n < 1:
        raise ValueError(f"--workers {n}: give a number of processes (>= 1) or auto")
    return n


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket: the workers bind the same port; with port
    0 this picks the port they all use. Held open for the parent's lifetime."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s, int(s.getsockname()[1])


def run_workers(
    cfg: RouterConfig,
    n: int,
    serve_one: Callable[[RouterConfig, SharedState | None, int, HostShare], int],
) -> int:
    """Start ``n`` workers (``serve_one(cfg, shared, index, host)`` runs one, returns its
    exit code) and supervise them until SIGTERM/SIGINT; returns 0 when all stopped cleanly."""
    reserved, port = _reserve_port(cfg.server.host, cfg.server.port)
    cfg = replace(cfg, server=replace(cfg.server, port=port))
    seg: ShmSegment | None = None
    if cfg.state.sync.kind is SyncKind.NONE:
        # room for backends registered at run time (the autoscaler's ceiling, else 64 more)
        # and the run-time backend list published while it spreads (slorouter.actuation.fleetshare)
        room = max(len(cfg.backends) + 64, cfg.autoscale.max_backends or 0)
        seg = ShmSegment(n, slot_size_for(room, len(cfg.tiers)) + FLEET_LIST_BYTES)
    # the host's /metrics: snapshot files (on tmpfs where there is one) and a pipe per worker
    snapshots = tempfile.mkdtemp(
        prefix="slorouter-metrics-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    pipes = [os.pipe() for _ in range(n)]
    for fds in pipes:
        for fd in fds:
            os.set_blocking(fd, False)
    reads = tuple(r for r, _w in pipes)
    writes = tuple(w for _r, w in pipes)
    children: dict[int, int] = {}  # pid -> worker index
    restarts: dict[int, list[float]] = {i: [] for i in range(n)}
    stopping = False

    def start(i: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            reserved.close()
            shared = None
            if seg is not None:
                shared = SharedState(
                    ShmStore(seg, i, WORKER_TTL_S),
                    holder_of(i),
                    WORKER_TICK_S,
                    WORKER_TTL_S,
                    event_s=WORKER_EVENT_S,
                    share_learning=cfg.state.sync.share_learning,
                )
            code = 1
            try:
                code = serve_one(cfg, shared, i, HostShare(snapshots, i, reads, writes))
            except BaseException:
                log.exception("worker %d failed", i)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = i

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        for i in range(n):
            start(i)
        print(f"slorouter: {n} workers on http://{cfg.server.host}:{port}", flush=True)
        status = 0
        while children:
            try:
                pid, st = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            i = children.pop(pid, -1)
            code = os.waitstatus_to_exitcode(st)
            if stopping or i < 0:
                status = status or (code if code > 0 else 0)
                continue
            now = time.monotonic()
            recent = [t for t in restarts[i] if now - t < 60.0]
            if len(recent) >= _MAX_RESTARTS:
                log.error(
                    "worker %d exited (%d) %d times within a minute: stopping all", i, code, len(recent)
                )
                forward(signal.SIGTERM, None)
                status = 1
                continue
            log.warning("worker %d exited unexpectedly (%d): starting it again", i, code)
            restarts[i] = [*recent, now]
            start(i)
        return status
    finally:
        reserved.close()
        if seg is not None:
            seg.close()
            seg.unlink()
        for fds in pipes:
            for fd in fds:
                os.close(fd)
        shutil.rmtree(snapshots, ignore_errors=True)
