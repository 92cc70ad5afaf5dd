"""``slorouter scaler-sim``: a reference receiver of the router's scaling webhooks that
starts and stops simulated engines — what a real actuator (a cloud API, a Kubernetes
controller) does with real servers, for the demo and the tests.

It listens on ``--listen`` (``POST /hook``; ``GET /state`` shows what it runs) and, per
decision whose signature verifies (``X-Slorouter-Signature``, HMAC-SHA256 of the body
with the secret in ``--secret-env``):

* ``add: n`` — starts ``n`` simulated engines (after ``--provisioning-delay`` seconds, the
  cold start a real server takes) and registers each with the router
  (``POST /admin/backends {"name", "url", "tier"}``, bearer token from ``--admin-token-env``);
* ``remove: [ids]`` — for each engine it started, tells the router to remove it
  (``DELETE /admin/backends/{id}?wait_s=...``: the router drains it first; already removed
  is fine) and stops the engine.

A router made of several replicas (``state.sync``) is one router: give every replica
(``--router`` repeated) and each call goes to the first that answers without a server
error — a registration or removal at any replica reaches the others, and a replica that
died (its successor leads the scaling) is skipped.

It answers at once (202) and acts in the background, so a slow start never holds the
router's webhook sender; a decision id seen before is answered 200 and not acted on
again (idempotent); a bad signature gets 401. Stop with Ctrl-C: every engine it started
is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from slorouter.actuation.webhook import SIGNATURE_HEADER, verify
from slorouter.engine.profiles import BUILTIN_PROFILES, load_profile
from slorouter.models.profile import ProfileError, StepProfile
from slorouter.simengine.server import ServedEngine, start_engine

log = logging.getLogger("slorouter.scaler_sim")


@dataclass
class Owned:
    tier: str
    served: ServedEngine


@dataclass
class ScalerSim:
    """The receiver (see the module docs). ``await start()`` returns its hook URL."""

    router: str
    admin_token: str
    secret: bytes
    provisioning_delay_s: float = 0.0
    profile: StepProfile | str = "cpu-tiny"
    engine: str = "vllm"
    seed: int = 0
    max_engines: int = 32
    name_prefix: str = "sim"
    fallback_routers: tuple[str, ...] = ()  # other replicas of the router, asked when one does not answer
    host: str = "127.0.0.1"
    port: int = 0
    drain_wait_s: float = 120.0
    engines: dict[str, Owned] = field(default_factory=dict)  # running now
    started: list[str] = field(default_factory=list)  # every engine started, in order
    decisions: list[dict[str, Any]] = field(default_factory=list)  # accepted, in order
    bad_signatures: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _made: int = 0
    _starting: int = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_get("/state", self._state)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=aiohttp.ClientTimeout(total=self.drain_wait_s + 30),
        )
        port = int(self._runner.addresses[0][1])
        return f"http://{self.host}:{port}/hook"

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._runner is not None:
            await self._runner.cleanup()
        for bid in list(self.engines):
            await self.engines.pop(bid).served.stop()
        if self._session is not None:
            await self._session.close()

    @property
    def acting(self) -> int:
        """Decisions' starts, registrations and removals under way."""
        return len(self._tasks)

    # -- HTTP ------------------------------------------------------------------------------

    async def _hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not verify(self.secret, raw, request.headers.get(SIGNATURE_HEADER)):
            self.bad_signatures += 1
            return web.json_response({"error": "bad or missing signature"}, status=401)
        try:
            body = orjson.loads(raw)
            did = str(body["decision_id"])
            tier = str(body["tier"])
            add = int(body.get("add", 0))
            remove = [str(x) for x in body.get("remove", [])]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            return web.json_response({"error": f"bad decision: {e}"}, status=400)
        if did in self._seen:
            self.duplicates += 1
            return web.json_response({"decision_id": did, "duplicate": True})
        self._seen[did] = None
        if len(self._seen) > 4096:
            self._seen.popitem(last=False)
        self.decisions.append(body)
        log.info("decision %s: tier %s add %d remove %s (%s)", did, tier, add, remove, body.get("reason"))
        for _ in range(max(0, add)):
            self._spawn(self._provision(tier))
        for bid in remove:
            self._spawn(self._release(bid))
        return web.json_response({"decision_id": did, "accepted": True}, status=202)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "engines": {b: {"url": o.served.url, "tier": o.tier} for b, o in self.engines.items()},
                "starting": self._starting,
                "acting": self.acting,
                "started": self.started,
                "decisions": len(self.decisions),
                "duplicates": self.duplicates,
                "bad_signatures": self.bad_signatures,
                "errors": self.errors,
            }
        )

    # -- acting ----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _provision(self, tier: str) -> None:
        if len(self.engines) + self._starting >= self.max_engines:
            self.errors.append(f"tier {tier}: not started, --max-engines {self.max_engines} reached")
            return
        self._starting += 1
        try:
            await asyncio.sleep(self.provisioning_delay_s)
            served = await start_engine(self.profile, engine=self.engine, seed=self.seed, host=self.host)
            self._made += 1
            bid = f"{self.name_prefix}-{tier}-{self._made}"
            self.engines[bid] = Owned(tier, served)
            self.started.append(bid)
        finally:
            self._starting -= 1
        body = {"name": bid, "url": served.url, "tier": tier, "engine": self.engine}
        for attempt in range(5):
            status, text = await self._ask("POST", "/admin/backends", body)
            if status in (200, 201):
                log.info("started %s at %s (tier %s), registered", bid, served.url, tier)
                return
            if 0 < status < 500:
                break
            await asyncio.sleep(0.2 * 2**attempt)
        why = f"HTTP {status}: {text[:200]}" if status else text
        self.errors.append(f"{bid}: registration failed ({why})")
        await self.engines.pop(bid).served.stop()

    async def _release(self, bid: str) -> None:
        owned = self.engines.get(bid)
        if owned is None:
            log.info("remove %s: not one of mine, left alone", bid)
            return
        status, text = await self._ask("DELETE", f"/admin/backends/{bid}?wait_s={self.drain_wait_s:g}")
        if status == 0:
            self.errors.append(f"{bid}: remove failed ({text})")
            return
        if status not in (200, 202, 404):
            self.errors.append(f"{bid}: remove answered HTTP {status}")
            return
        self.engines.pop(bid, None)
        await owned.served.stop()
        log.info("stopped %s", bid)

    async def _ask(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        """One call to the router: ``router`` first, then each of ``fallback_routers``
        until one answers below 500. (status, body text) of the last answer; (0, the
        error's name) when none answered at all."""
        assert self._session is not None
        got = (0, "no router")
        for base in (self.router, *self.fallback_routers):
            try:
                async with self._session.request(method, base + path, json=body) as r:
                    got = (r.status, await r.text())
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                got = (0, type(e).__name__)
                continue
            if got[0] < 500:
                break
        return got


# -- CLI -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--router",
        required=True,
        action="append",
        help="the router's base URL, e.g. http://127.0.0.1:8080; repeat it for each replica of a "
        "router of several (state.sync): the first that answers is used",
    )
    p.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT to receive webhooks on")
    p.add_argument(
        "--provisioning-delay", type=float, default=0.0, help="seconds before a started engine is up"
    )
    p.add_argument(
        "--profile", default="cpu-tiny", help=f"engine profile ({', '.join(BUILTIN_PROFILES)} or a JSON file)"
    )
    p.add_argument("--engine", choices=("vllm", "tgi"), default="vllm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-engines", type=int, default=32, help="never run more engines than this")
    p.add_argument(
        "--admin-token-env", default="SLOROUTER_ADMIN_TOKEN", help="env var of the router's admin token"
    )
    p.add_argument("--secret-env", default="SLOROUTER_WEBHOOK_SECRET", help="env var of the webhook secret")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _check(args: argparse.Namespace) -> ScalerSim | str:
    token = os.environ.get(args.admin_token_env, "")
    secret = os.environ.get(args.secret_env, "")
    if not token:
        return f"set {args.admin_token_env} to the router's admin token (or name another: --admin-token-env)"
    if not secret:
        return f"set {args.secret_env} to the webhook secret the router signs with (or: --secret-env)"
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"--listen: give HOST:PORT, e.g. 127.0.0.1:8090, got {args.listen!r}"
    for url in args.router:
        if not url.startswith(("http://", "https://")):
            return f"--router: give the router's base URL, e.g. http://127.0.0.1:8080, got {url!r}"
    if args.provisioning_delay < 0 or args.max_engines < 1:
        return "--provisioning-delay must be >= 0 and --max-engines >= 1"
    try:
        profile = load_profile(args.profile)
    except ProfileError as e:
        return f"--profile: {e}"
    return ScalerSim(
        args.router[0].rstrip("/"),
        token,
        secret.encode(),
        provisioning_delay_s=args.provisioning_delay,
        profile=profile,
        engine=args.engine,
        seed=args.seed,
        max_engines=args.max_engines,
        host=host,
        port=int(port),
        fallback_routers=tuple(u.rstrip("/") for u in args.router[1:]),
    )


async def _serve(sim: ScalerSim) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    url = await sim.start()
    routers = ", ".join((sim.router, *sim.fallback_routers))
    print(f"scaler-sim: webhooks at {url}, registering engines with {routers}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    got = _check(args)
    if isinstance(got, str):
        print(f"slorouter scaler-sim: {got}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(got))
    except OSError as e:
        print(f"slorouter scaler-sim: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return 1
    return 0
