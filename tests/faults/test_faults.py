"""Fault injection under a steady mixed load (real processes and sockets on 127.0.0.1).

The fleet: two good simulated engines (child processes), one more that is SIGKILLed
while streaming and started again later, one that accepts connections and never
answers, one that answers 500, one that answers 429, and a port that refuses
connections. Clients: streaming and non-streaming, chat and completions, three tiers,
and some that disconnect mid-stream from long generations.

Asserted: every request gets a complete answer or a clean error (an SSE error event
then ``[DONE]``; no hangs); failures before the first byte are retried and succeed
elsewhere (0 HTTP errors); only streams that were running on the killed engine break;
each request is finalized exactly once and every counter returns to zero; the engines
run nothing at the end (disconnected clients' requests were aborted); the dead, hung,
failing and refusing backends are ejected within the configured thresholds and the
killed engine comes back after it restarts. The figures are printed as JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from slorouter.http.admin import CONTROL
from slorouter.values import Outcome
from tests.faults.kit import EngineProcess, hang_server, refused_port, status_server
from tests.promtext import values
from tests.routerkit import RouterHandle, router_config, run_router

HEALTH = {"interval_s": 0.25, "timeout_s": 0.25, "failures": 2, "successes": 2, "cooldown_s": 1.0}
TIERS = [
    {
        "name": "interactive",
        "class": "latency",
        "ttft_ms": 1000,
        "tpot_ms": 100,
        "timeouts": {"first_byte_s": 0.7},
    },
    {"name": "standard", "class": "latency", "ttft_ms": 8000, "tpot_ms": 200},
    {"name": "batch", "class": "best_effort"},
]
MSG = [{"role": "user", "content": "tell me about fault tolerant routers"}]


async def poll(cond: Callable[[], bool], timeout_s: float, step: float = 0.01) -> float:
    """Wait until ``cond()``; return the time it took (TimeoutError past the deadline)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)
    return time.monotonic() - t0


def classify_stream(body: bytes) -> str:
    done = body.endswith(b"data: [DONE]\n\n")
    if b'data: {"error"' in body:
        return "broken" if done else "bad-frame"
    return "ok" if done else "truncated"


async def one(s: aiohttp.ClientSession, url: str, i: int) -> str:
    """One request of the mix; returns how it ended from the client's side."""
    kind = i % 6
    tier = ("interactive", "standard", "standard", "batch", "standard", "batch")[kind]
    headers = {"x-slo-tier": tier}
    if kind == 5 and i % 12 == 5:  # a client that leaves mid-stream from a long generation
        body: dict[str, Any] = {"model": "sim-llama", "messages": MSG, "max_tokens": 2000}
        body |= {"ignore_eos": True, "stream": True}
        async with s.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status != 200:
                return f"http-{r.status}"
            for _ in range(3):
                await r.content.readany()
            r.close()
            return "left"
    stream = kind != 2
    path = "/v1/completions" if kind == 1 else "/v1/chat/completions"
    body = {"model": "sim-llama", "max_tokens": 6 + i % 7, "stream": stream}
    body |= {"prompt": "once upon a time"} if kind == 1 else {"messages": MSG}
    async with s.post(url + path, json=body, headers=headers) as r:
        data = await r.read()
        if r.status != 200:
            err = orjson.loads(data).get("error", {})
            assert {"message", "type", "code"} <= set(err), data  # a clean OpenAI-style error
            return f"http-{r.status}"
        if stream:
            return classify_stream(data)
        usage = orjson.loads(data)["usage"]
        return "ok" if usage["completion_tokens"] >= 1 else "bad-body"


async def load(url: str, stop: asyncio.Event, results: Counter[str], workers: int = 10) -> int:
    sent = 0
    timeout = aiohttp.ClientTimeout(total=20)  # a request longer than this is a hang

    async def worker(w: int) -> None:
        nonlocal sent
        async with aiohttp.ClientSession(timeout=timeout) as s:
            i = w
            while not stop.is_set():
                sent += 1
                try:
                    results[await one(s, url, i)] += 1
                except TimeoutError:
                    results["hang"] += 1
                i += workers

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return sent


async def test_faults_under_load() -> None:
    good = [EngineProcess(), EngineProcess()]
    victim = EngineProcess()
    for e in (*good, victim):
        e.start()
    try:
        await asyncio.gather(*(e.wait_ready() for e in (*good, victim)))
        async with (
            hang_server() as (hang_url, _),
            status_server(500) as (err_url, _),
            status_server(429) as (
                busy_url,
                busy_seen,
            ),
        ):
            refused = f"http://127.0.0.1:{refused_port()}"
            urls = [good[0].url, good[1].url, victim.url, hang_url, err_url, refused, busy_url]
            names = ["good0", "good1", "victim", "hang", "http500", "refused", "http429"]
            cfg = router_config(
                urls,
                tiers=TIERS,
                extra={
                    "health": HEALTH,
                    "retries": {"max_attempts": len(urls), "backoff_s": 0.01, "backoff_max_s": 0.05},
                    "timeouts": {"connect_s": 0.5, "first_byte_s": 3.0, "idle_s": 2.0},
                },
            )
            async with run_router(cfg) as router:
                report = await _scenario(router, names, victim, busy_seen)
        for e in good:
            assert await e.running() == 0  # disconnected clients' requests were aborted
    finally:
        for e in (*good, victim):
            e.stop()
    print("\nFAULTS " + json.dumps(report, sort_keys=True))


async def _scenario(
    router: RouterHandle, names: list[str], victim: EngineProcess, busy_seen: list[int]
) -> dict[str, Any]:
    svc = router.services
    tracker = svc.tracker
    ids = {n: f"e{i}" for i, n in enumerate(names)}
    healthy = lambda n: ids[n] in tracker.health.healthy  # noqa: E731
    outcomes: list[Outcome] = []
    tracker.add_listener(outcomes.append)
    results: Counter[str] = Counter()
    stop = asyncio.Event()
    t0 = time.monotonic()
    loader = asyncio.create_task(load(router.url, stop, results))
    cfg = HEALTH
    probe_bound = cfg["failures"] * (cfg["interval_s"] * 1.1 + cfg["timeout_s"]) + cfg["interval_s"]
    slack = 1.0  # scheduling on a shared 2-core machine

    eject: dict[str, float] = {}
    waits: list[Awaitable[None]] = []

    async def until_ejected(name: str) -> None:
        eject[name] = await poll(lambda: not healthy(name), probe_bound + slack)

    for name in ("hang", "http500", "refused"):
        waits.append(until_ejected(name))
    await asyncio.gather(*waits)
    eject = {k: round(v, 3) for k, v in eject.items()}

    # kill the victim while it streams
    vid = ids["victim"]

    def streaming_on_victim() -> int:
        return sum(1 for r in tracker.residents(vid) if r.req.stream and r.first_token_at is not None)

    await poll(lambda: streaming_on_victim() >= 2, 15.0)
    resident_at_kill = tracker.loads[vid].running
    t_kill = time.monotonic()
    victim.kill()
    eject["victim"] = round(await poll(lambda: not healthy("victim"), probe_bound + slack), 3)
    killed_at = t_kill - t0

    monitor = router.app[CONTROL].monitor  # probes see it too (not only live traffic)
    probes_down = await poll(lambda: not monitor.states[vid].probe_up, probe_bound + slack)
    await asyncio.sleep(0.2)
    victim.start()
    await victim.wait_ready()
    t_up = time.monotonic()
    recover_bound = cfg["cooldown_s"] + cfg["successes"] * cfg["interval_s"] * 1.1 + cfg["timeout_s"] + slack
    recover = await poll(lambda: healthy("victim"), recover_bound)
    served_before = sum(1 for o in outcomes if o.backend == vid)
    await poll(
        lambda: sum(1 for o in outcomes if o.backend == vid and o.status.value == "ok") > served_before, 10
    )
    await asyncio.sleep(0.5)
    stop.set()
    sent = await loader
    await poll(tracker.all_zero, 5.0)  # no counter drift: every request finalized

    assert sum(results.values()) == sent
    by_rid = Counter(o.rid for o in outcomes)
    assert len(outcomes) == sent and max(by_rid.values()) == 1  # exactly once each
    assert tracker.all_zero()
    assert results["hang"] == 0 and results["truncated"] == 0 and results["bad-frame"] == 0, results
    http_errors = sum(v for k, v in results.items() if k.startswith("http-"))
    assert http_errors == svc.forwarder.budget_stops == 0, results  # failures before a byte: served elsewhere
    assert 1 <= results["broken"] <= resident_at_kill, (results, resident_at_kill)
    assert busy_seen[0] > 0 and healthy("http429")  # 429: retried elsewhere, never ejected
    metrics = await _metrics(router.url)
    inflight = values(metrics, "slorouter_backend_inflight_requests")
    assert len(inflight) == len(svc.tracker.backends.backends) and set(inflight.values()) == {0}
    return {
        "sent": sent,
        "answered_ok": results["ok"],
        "left_mid_stream": results["left"],
        "broken_streams": results["broken"],
        "resident_on_victim_at_kill": resident_at_kill,
        "http_errors": http_errors,
        "retried": svc.forwarder.retries,
        "killed_at_s": round(killed_at, 2),
        "time_to_eject_s": eject,
        "victim_probes_down_after_ejection_s": round(probes_down, 3),
        "eject_bound_s": round(probe_bound + slack, 2),
        "time_to_recover_s": round(recover, 3),
        "recover_bound_s": round(recover_bound, 2),
        "recovered_after_engine_up_s": round(time.monotonic() - t_up, 2),
        "outcomes": dict(Counter(o.status.value for o in outcomes)),
    }


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        return await r.text()
