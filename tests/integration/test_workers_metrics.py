"""``/metrics`` of ``slorouter serve --workers 2`` is the whole host's, whichever worker
the kernel gives the scrape to: counters and histograms summed over both workers, the
fleet view once (from the leader), per-worker views labelled ``worker``.

Real processes, real sockets: simulated engines in this test's loop, the router as a
subprocess, the real ``openai`` client (a client per request, so each request opens its
own connection and the kernel spreads them over the workers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp
import pytest

from slorouter.simengine.server import serve_engines
from tests.promtext import values
from tests.workerskit import chat, get, serve_workers, until, write_config

STREAMS = 8  # long streams, to see both workers place requests
SHORT = 12  # then quick non-streaming requests
TOKENS = 40
SHORT_TOKENS = 5
ADMIN = "workers-metrics-admin"


def _total(text: str, name: str) -> float:
    return sum(values(text, name).values())


@pytest.mark.timeout(90)
async def test_any_worker_scrape_counts_both_workers(tmp_path: Path) -> None:
    # h100-70b: ~40 ms per step, so a 40-token stream lasts ~1.6 s
    async with serve_engines(2, profile="h100-70b", seed=5) as fleet:
        cfg = tmp_path / "router.yaml"
        write_config(fleet.urls, cfg)
        async with serve_workers(cfg, ADMIN) as (_proc, url):
            seen: set[int] = set()

            async def both() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    seen.add(int(json.loads((await get(url, "/health", ADMIN))[1])["worker"]))
                return seen == {0, 1}

            await until(both, 20, "both workers to answer")

            # both workers place requests: while the streams run, each has some of its own
            streams = [asyncio.create_task(chat(url, TOKENS, stream=True)) for _ in range(STREAMS)]
            own: dict[int, int] = {}

            async def placed_by_both() -> bool:
                b = json.loads((await get(url, "/admin/backends", ADMIN))[1])
                if sum(x["inflight"]["requests"] for x in b["backends"]) == STREAMS:
                    own[b["worker"]] = sum(x["inflight"]["own_requests"] for x in b["backends"])
                return len(own) == 2

            await until(placed_by_both, 15, "both workers to see every stream")
            assert sum(own.values()) == STREAMS and all(0 < n < STREAMS for n in own.values()), own
            got = await asyncio.wait_for(asyncio.gather(*streams), 30)
            assert got == [TOKENS] * STREAMS
            short = await asyncio.gather(*(chat(url, SHORT_TOKENS, stream=False) for _ in range(SHORT)))
            assert short == [SHORT_TOKENS] * SHORT
            n = STREAMS + SHORT

            # every scrape, whichever worker answers it, counts every request of both
            answered: set[str] = set()
            for _ in range(40):
                headers, text = await get(url, "/metrics", ADMIN)
                answered.add(headers["X-Slorouter-Worker"])
                assert values(text, "slorouter_requests_total") == {
                    frozenset({("tier", "chat"), ("status", "ok")}): n
                }
                assert (
                    _total(text, "slorouter_output_tokens_total") == STREAMS * TOKENS + SHORT * SHORT_TOKENS
                )
                assert _total(text, "slorouter_ttft_seconds_count") == n
                assert _total(text, "slorouter_e2e_seconds_count") == n
                assert _total(text, "slorouter_queue_wait_seconds_count") == n
                inf = values(text, "slorouter_e2e_seconds_bucket")[
                    frozenset({("tier", "chat"), ("le", "+Inf")})
                ]
                assert inf == n
                # nothing in flight now, summed over the workers
                assert _total(text, "slorouter_backend_inflight_requests") == 0
                # one leader on the host, the fleet view once (not once per worker)
                assert _total(text, "slorouter_leader") == 1
                assert set(values(text, "slorouter_fleet_routers").values()) == {2}
                assert len(values(text, "slorouter_fleet_inflight_requests")) == 2  # per backend
                # a worker's own view: one series per worker
                assert {dict(k)["worker"] for k in values(text, "slorouter_sync_peers")} == {"0", "1"}
                assert set(values(text, "slorouter_sync_peers").values()) == {1}
                if answered == {"0", "1"}:
                    break
            assert answered == {"0", "1"}, answered
