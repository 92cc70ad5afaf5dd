"""The router's service gain (``/metrics``) and the load generator's, on one run: the
``agents`` workload (config/workloads/agents.yaml: streaming chat, non-streaming tool
calls with a deadline, fan-out and chain workflows, best-effort batch) through the real
router to simulated engines, real sockets on 127.0.0.1, the load generator's runner
in-process.

Both sides judge with :mod:`slojudge`, each from what it saw: the router from a request's
arrival at the router and each chunk as it passed through, the load generator from its
send and each chunk as it reached it. They agree per tier and overall (the brief: within
1 %; here they are equal).

The run is the shipped workload made short (2.5 s of arrivals, output lengths capped),
with the chat tier's TTFT set to 1 ms, which no engine step meets, and its TPOT to 1 s:
every chat request loses its prompt's credit and its first token and keeps the rest, so
the latency gain is partial on both sides (the first-token and per-token accounting are
compared, not just full marks) with margins of milliseconds to seconds on either side of
each deadline. (Where a token is due is timing-sensitive by a few ms between the two
vantage points, the router sees each chunk before the client does; the token-exact
agreement on the same times is in tests/unit/test_router_gain.py and test_sim_gain.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

import slojudge
from loadgen import results
from loadgen.runner import run_workload
from loadgen.workload import parse_workload
from slorouter.sim.server import serve_engines
from tests.promtext import values
from tests.routerkit import router_config, run_router

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]
AGENTS = REPO / "config" / "workloads" / "agents.yaml"


def bounded_agents() -> dict[str, Any]:
    """agents.yaml, short (see the module doc)."""
    doc = yaml.safe_load(AGENTS.read_text())
    doc["duration_s"] = 2.5
    doc["drain_s"] = 30
    doc["request_timeout_s"] = 30
    doc["arrival"] = {"process": "poisson", "rate": 6}
    for entry in doc["mix"]:
        out = entry["output_tokens"]
        if out["dist"] == "fixed":
            out["value"] = 128
        else:
            out["min"], out["max"] = 40, 128
    for t in doc["tiers"]:
        if t["name"] == "interactive":
            t["ttft_ms"], t["tpot_ms"] = 1, 1000
    return doc


async def test_router_and_loadgen_service_gain_agree() -> None:
    doc = bounded_agents()
    workload = parse_workload(doc, str(AGENTS), REPO)
    async with serve_engines(2, profile="h100-8b") as fleet:
        cfg = router_config(fleet.urls, policy="least-request", tiers=doc["tiers"])
        async with run_router(cfg) as r:
            res = await run_workload(workload, r.url)
            async with aiohttp.ClientSession() as s, s.get(r.url + "/metrics") as resp:
                text = await resp.text()
    router = {dict(k)["tier"]: v for k, v in values(text, "slorouter_service_gain_total").items()}
    for k, v in values(text, "slorouter_service_gain_forfeited_total").items():
        router[dict(k)["tier"]] -= v  # what a later call of the workflow took back
    lg = results.from_run(res)
    blocks = lg["tiers"]
    assert set(blocks) == set(router) == {"interactive", "tools", "agents", "batch"}
    assert sum(b["status"]["ok"] for b in blocks.values()) == len(res.records)  # nothing failed
    assert blocks["agents"]["requests"] > blocks["agents"]["arrivals"] > 0  # workflows ran
    for name, b in blocks.items():
        assert b["service_gain"] > 0
        assert router[name] == pytest.approx(b["service_gain"], rel=1e-9), name
    assert sum(router.values()) == pytest.approx(lg["overall"]["service_gain"], rel=0.01)
    # the chat tier: every request without its prompt and first token, the rest on time
    chat = [c for c in res.records if c.tier == "interactive"]
    assert blocks["interactive"]["service_gain"] == pytest.approx(
        3 * sum(slojudge.value(0, c.output_tokens - 1) for c in chat)
    )
    assert blocks["interactive"]["service_gain"] < 0.8 * blocks["interactive"]["service_gain_max"]
