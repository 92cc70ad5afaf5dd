"""``slorouter serve --config FILE [--host H] [--port P]``: validate the config (every
error listed, with the file and the field), then run the router until SIGINT/SIGTERM.
SIGHUP re-reads the config file (as ``POST /admin/reload`` does): an invalid file is
refused with every error logged and the running config stays."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from slorouter.app import build_app, runner_for
from slorouter.config.model import RouterConfig
from slorouter.http.admin import CONTROL
from slorouter.metrics.host import HostShare
from slorouter.proxy.sharing import SharedState
from slorouter.tools.config_cmd import check
from slorouter.tools.workers import run_workers, workers_of

log = logging.getLogger("slorouter")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="router YAML config")
    parser.add_argument("--host", help="address to bind (default: server.host from the config)")
    parser.add_argument(
        "--port", type=int, help="port to bind (default: server.port from the config; 0: any free port)"
    )
    parser.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="router processes on this port, sharing one load picture (auto: one per core; default 1)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _tune_gc() -> None:
    """Everything built at start-up lives as long as the process: move it out of the
    collector's sight (``gc.freeze``) so full collections stop walking ~45k long-lived
    objects, and collect the young generation less often. Request objects form few
    cycles; the measured effect was fewer, shorter pauses (docs/overhead.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def serve(
    cfg: RouterConfig,
    ready: asyncio.Event | None = None,
    adjust: Callable[[RouterConfig], RouterConfig] | None = None,
    shared: SharedState | None = None,
    worker: int | None = None,
    host: HostShare | None = None,
) -> None:
    app = build_app(cfg, adjust=adjust, shared=shared, worker=worker, host=host)
    runner = runner_for(app, cfg)
    await runner.setup()
    site = web.TCPSite(
        runner, cfg.server.host, cfg.server.port, reuse_address=True, reuse_port=worker is not None
    )
    await site.start()
    _tune_gc()
    port = int(runner.addresses[0][1]) if runner.addresses else cfg.server.port
    log.info(
        "slorouter listening on http://%s:%d (%d backends, %d tiers, policy %s)",
        cfg.server.host,
        port,
        len(cfg.backends),
        len(cfg.tiers),
        cfg.policy.kind,
    )
    print(f"slorouter listening on http://{cfg.server.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down (in-flight requests get %.0f s)", cfg.server.shutdown_grace_s)
        await runner.cleanup()


def _reload(app: web.Application) -> None:
    """SIGHUP: re-read the config file (the outcome is logged by the reload itself)."""
    ctl = app[CONTROL]
    if ctl.reload is not None:
        ctl.reload()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg, errors = check(args.config)
    if errors or cfg is None:
        print(f"slorouter: the config {args.config} has {len(errors)} error(s):", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        print("fix them (check with: slorouter config check FILE) and start again", file=sys.stderr)
        return 2

    def adjust(c: RouterConfig) -> RouterConfig:  # the command line wins, at start and on reload
        server = c.server
        if args.host:
            server = replace(server, host=args.host)
        if args.port is not None:
            server = replace(server, port=args.port)
        return replace(c, server=server)

    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"slorouter: --port {args.port}: give a port from 0 (any free port) to 65535", file=sys.stderr)
        return 2
    try:
        workers = workers_of(args.workers)
    except ValueError as e:
        print(f"slorouter: {e}", file=sys.stderr)
        return 2
    cfg = adjust(cfg)

    def serve_one(
        c: RouterConfig, shared: SharedState | None, worker: int | None, host: HostShare | None
    ) -> int:
        try:
            try:
                import uvloop
            except ImportError:
                asyncio.run(serve(c, adjust=adjust, shared=shared, worker=worker, host=host))
            else:
                uvloop.run(serve(c, adjust=adjust, shared=shared, worker=worker, host=host))
        except OSError as e:
            print(f"slorouter: cannot listen on {c.server.host}:{c.server.port}: {e}", file=sys.stderr)
            return 1
        return 0

    if workers == 1:
        return serve_one(cfg, None, None, None)
    try:
        return run_workers(cfg, workers, serve_one)
    except OSError as e:
        print(f"slorouter: cannot listen on {cfg.server.host}:{cfg.server.port}: {e}", file=sys.stderr)
        return 1
