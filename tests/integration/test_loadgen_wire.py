"""The load generator against small scripted SSE servers on real sockets.

Each test starts a real aiohttp server on 127.0.0.1 (ephemeral port) whose responses
are scripted per request (status, chunk pacing, tokens per chunk, usage), runs the
load generator against it and checks what it measured and how it judged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from loadgen import results
from loadgen.runner import RunResult, run_workload
from loadgen.workload import parse_workload

pytestmark = pytest.mark.timeout(30)


@dataclass
class Script:
    status: int = 200
    gaps: list[float] = field(default_factory=lambda: [0.01] * 5)  # before each chunk; [0] is the TTFT
    per_chunk: int = 1
    role: bool = True
    usage: bool = True
    error_after: int | None = None  # send an error event after this many chunks
    hang: bool = False


@dataclass
class Seen:
    rid: str
    tier: str | None
    workflow: str | None
    arrived: float
    finished: float = 0.0
    auth: str | None = None


class ScriptServer:
    def __init__(self, script_for: Callable[[web.Request], Script]) -> None:
        self.script_for = script_for
        self.seen: list[Seen] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.release = asyncio.Event()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            request.headers.get("x-request-id", ""),
            request.headers.get("x-slo-tier"),
            request.headers.get("x-slo-workflow-id"),
            time.perf_counter(),
            auth=request.headers.get("Authorization"),
        )
        self.seen.append(seen)
        body = await request.json()
        sc = self.script_for(request)
        try:
            if sc.hang:
                await self.release.wait()  # until the server stops
            if sc.status != 200:
                return web.json_response({"error": {"message": "scripted"}}, status=sc.status)
            n = len(sc.gaps) * sc.per_chunk
            usage = {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
            if not body.get("stream"):
                await asyncio.sleep(sum(sc.gaps))
                msg = {"role": "assistant", "content": " w" * n}
                return web.json_response({"choices": [{"index": 0, "message": msg}], "usage": usage})
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i, gap in enumerate(sc.gaps):
                await asyncio.sleep(gap)
                if i == 0 and sc.role:
                    await resp.write(_event({"delta": {"role": "assistant", "content": ""}}))
                if sc.error_after is not None and i == sc.error_after:
                    await resp.write(b'data: {"error": {"message": "engine died", "code": 500}}\n\n')
                    return resp
                await resp.write(_event({"delta": {"content": " w" * sc.per_chunk}}))
            if sc.usage and (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp
        finally:
            seen.finished = time.perf_counter()


def _event(choice: dict[str, Any]) -> bytes:
    obj = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, **choice}]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@contextlib.asynccontextmanager
async def _serve(script_for: Callable[[web.Request], Script]) -> AsyncIterator[ScriptServer]:
    srv = ScriptServer(script_for)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def _workload(tiers: list[dict[str, Any]], mix: list[dict[str, Any]], **extra: Any) -> Any:
    data = {
        "tiers": tiers,
        "mix": mix,
        "arrival": extra.pop("arrival", {"process": "constant", "rate": 20}),
        "requests": extra.pop("requests", 6),
        "seed": 3,
        **extra,
    }
    return parse_workload(data, "test-workload", Path.cwd())


async def _run(
    script_for: Callable[[web.Request], Script], w: Any
) -> tuple[RunResult, dict[str, Any], ScriptServer]:
    async with _serve(script_for) as srv:
        res = await run_workload(w, srv.url)
    return res, results.from_run(res), srv


# generous limits: a busy shared machine must not turn on-time tokens into misses
LAT = {"class": "latency", "ttft_ms": 1000, "tpot_ms": 100}
TIGHT = {"class": "latency", "ttft_ms": 500, "tpot_ms": 30}


async def test_a_stall_breaks_dslo_but_not_mean_tpot() -> None:
    # "stall": 5 tokens 5 ms apart, a 1 s stall, 94 more 5 ms apart: mean TPOT ~ 15 ms (<= 30),
    # but token 5 arrives ~1.04 s after sending, due at 0.5 + 5 * 0.03 = 0.65 s.
    stall = [0.02] + [0.005] * 4 + [1.0] + [0.005] * 94
    smooth = [0.02] + [0.005] * 99

    def script(req: web.Request) -> Script:
        return Script(gaps=stall if req.headers["x-slo-tier"] == "stall" else smooth)

    w = _workload(
        [{"name": "stall", **TIGHT}, {"name": "smooth", **TIGHT}],
        [
            {"tier": "stall", "share": 1, "output_tokens": 100},
            {"tier": "smooth", "share": 1, "output_tokens": 100},
        ],
        requests=8,
    )
    res, doc, _ = await _run(script, w)
    st, sm = doc["tiers"]["stall"], doc["tiers"]["smooth"]
    assert st["arrivals"] > 0 and sm["arrivals"] > 0
    assert st["attainment_mean_tpot"] == 1.0 and st["attainment_dslo"] == 0.0 and st["attainment"] == 0.0
    assert sm["attainment_mean_tpot"] == 1.0 and sm["attainment_dslo"] == 1.0
    assert st["median_tpot_ms"] < 30
    stalled = [r for r in res.records if r.tier == "stall"]
    assert all(max(b - a for a, b in itertools.pairwise(r.chunks)) > 0.9 for r in stalled)
    # tokens before the stall were on time, so the stalled requests still earn some gain
    assert 0 < st["service_gain"] < st["service_gain_max"]
    rec = next(r for r in res.records if r.tier == "stall")
    assert rec.lead == 1 and len(rec.token_chunks) == 100 and rec.output_tokens == 100


async def test_429_counts_as_a_miss_in_the_denominator() -> None:
    def script(req: web.Request) -> Script:
        return Script(status=429 if req.headers["x-slo-tier"] == "over" else 200)

    w = _workload(
        [{"name": "gold", **LAT}, {"name": "over", **LAT}],
        [{"tier": "gold", "share": 1}, {"tier": "over", "share": 1}],
        requests=12,
    )
    _, doc, _ = await _run(script, w)
    gold, over = doc["tiers"]["gold"], doc["tiers"]["over"]
    assert over["status"]["rejected"] == over["arrivals"] > 0 and over["attainment"] == 0.0
    assert gold["attainment"] == 1.0
    assert doc["overall"]["attainment"] == pytest.approx(gold["arrivals"] / 12)
    assert doc["failed"] == over["arrivals"] and doc["completed"] == gold["arrivals"]
    assert doc["overall"]["min_tier"] == "over"


async def test_multi_token_chunks_use_usage_and_spread() -> None:
    # 10 chunks of 4 tokens, 40 ms apart: chunk j carries tokens 4j..4j+3; token 4j is due at
    # 1.0 + 4j * 0.1 s, it arrives at ~0.02 + 0.04 j: on time.
    def script(req: web.Request) -> Script:
        return Script(gaps=[0.02] + [0.04] * 9, per_chunk=4, usage=req.headers["x-slo-tier"] == "u")

    w = _workload(
        [{"name": "u", **LAT}, {"name": "nousage", **LAT}],
        [
            {"tier": "u", "share": 1, "output_tokens": 40},
            {"tier": "nousage", "share": 1, "output_tokens": 40},
        ],
    )
    res, doc, _ = await _run(script, w)
    assert doc["tiers"]["u"]["attainment_dslo"] == 1.0
    assert doc["tiers"]["u"]["total_output_tokens"] == 40 * doc["tiers"]["u"]["completed"]
    # without usage, one token per chunk is all the client can know
    assert doc["tiers"]["nousage"]["total_output_tokens"] == 10 * doc["tiers"]["nousage"]["completed"]
    u = next(r for r in res.records if r.tier == "u")
    assert u.usage_prompt == 11 and doc["input_lens"].count(11) == doc["tiers"]["u"]["completed"]


async def test_workflow_calls_wait_for_their_predecessors() -> None:
    def script(req: web.Request) -> Script:
        return Script(gaps=[0.03] + [0.01] * 3)

    w = _workload(
        [
            {"name": "fan", "class": "workflow", "deadline_ms": 5000},
            {"name": "chain", "class": "workflow", "deadline_ms": 5000},
        ],
        [
            {"tier": "fan", "share": 1, "workflow": {"shape": "fanout", "width": 3}},
            {"tier": "chain", "share": 1, "workflow": {"shape": "chain", "calls": 3}},
        ],
        requests=6,
    )
    res, doc, srv = await _run(script, w)
    by_rid = {s.rid.rsplit("-", 1)[1]: s for s in srv.seen}
    assert len(by_rid) == sum(len(u.calls) for u in res.units) == doc["num_prompts"]
    checked = 0
    for unit in res.units:
        wf_ids = {by_rid[str(c.rid)].workflow for c in unit.calls}
        assert len(wf_ids) == 1 and None not in wf_ids
        for i, deps in enumerate(unit.deps):
            me = unit.calls[i]
            for d in deps:
                dep = unit.calls[d]
                assert me.sent is not None and dep.done is not None and me.sent >= dep.done
                # and on the server: it saw this call only after it had finished the predecessor
                assert by_rid[str(me.rid)].arrived >= by_rid[str(dep.rid)].finished
                checked += 1
        if len(unit.deps) == 5:  # fan-out: root, 3 parallel, join — the parallel calls overlap
            mids = [by_rid[str(c.rid)] for c in unit.calls[1:4]]
            assert max(m.arrived for m in mids) < min(m.finished for m in mids)
    assert checked > 0
    assert len({s.workflow for s in srv.seen}) == len(res.units)
    assert doc["tiers"]["fan"]["attainment"] == 1.0 and doc["tiers"]["fan"]["unit"] == "workflow"


async def test_a_failed_call_stops_its_workflow() -> None:
    def script(req: web.Request) -> Script:
        return Script(status=500)

    w = _workload(
        [{"name": "chain", "class": "workflow", "deadline_ms": 5000}],
        [{"tier": "chain", "share": 1, "workflow": {"shape": "chain", "calls": 3}}],
        requests=2,
    )
    res, doc, srv = await _run(script, w)
    assert len(srv.seen) == 2  # only the first call of each workflow was sent
    assert [c.status for c in res.units[0].calls] == ["error", "cancelled", "cancelled"]
    assert doc["tiers"]["chain"]["attainment"] == 0.0


async def test_non_streaming_deadline_requests() -> None:
    def script(req: web.Request) -> Script:
        return Script(gaps=[0.05] if req.headers["x-slo-tier"] == "fast" else [1.5])

    w = _workload(
        [
            {"name": "fast", "class": "deadline", "deadline_ms": 1000},
            {"name": "slow", "class": "deadline", "deadline_ms": 1000},
        ],
        [{"tier": "fast", "share": 1}, {"tier": "slow", "share": 1}],
    )
    res, doc, _ = await _run(script, w)
    assert all(not r.stream for r in res.records)
    assert doc["tiers"]["fast"]["attainment"] == 1.0 and doc["tiers"]["slow"]["attainment"] == 0.0
    assert doc["tiers"]["slow"]["completed"] == doc["tiers"]["slow"]["arrivals"]  # done, but late


async def test_timeouts_errors_and_cancellation_are_classified() -> None:
    def script(req: web.Request) -> Script:
        tier = req.headers["x-slo-tier"]
        if tier == "broken":
            return Script(gaps=[0.01] * 5, error_after=2)
        return Script(hang=True)

    w = _workload(
        [{"name": "broken", **LAT}, {"name": "hang", **LAT}],
        [{"tier": "broken", "share": 1}, {"tier": "hang", "share": 1}],
        request_timeout_s=0.3,
        requests=6,
    )
    _, doc, _ = await _run(script, w)
    assert doc["tiers"]["broken"]["status"]["error"] == doc["tiers"]["broken"]["arrivals"] > 0
    assert doc["tiers"]["hang"]["status"]["timeout"] == doc["tiers"]["hang"]["arrivals"] > 0

    w2 = _workload([{"name": "hang", **LAT}], [{"tier": "hang", "share": 1}], drain_s=0.2, requests=2)
    t = time.perf_counter()
    _, doc2, _ = await _run(script, w2)
    assert time.perf_counter() - t < 5
    assert doc2["tiers"]["hang"]["status"]["cancelled"] == 2 and doc2["overall"]["attainment"] == 0.0


async def test_results_round_trip_and_keys(tmp_path: Path) -> None:
    def script(req: web.Request) -> Script:
        return Script()

    w = _workload([{"name": "a", **LAT}], [{"tier": "a", "share": 1}])
    _, doc, _ = await _run(script, w)
    for key in (
        "completed", "failed", "request_throughput", "request_goodput", "output_throughput",
        "total_token_throughput", "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms",
        "mean_tpot_ms", "p90_tpot_ms", "median_itl_ms", "p95_itl_ms", "mean_e2el_ms", "p50_e2el_ms",
        "itls", "ttfts", "input_lens", "output_lens", "latencies", "duration", "tiers", "overall",
    ):  # fmt: skip
        assert key in doc, key
    path = tmp_path / "r.json"
    results.save(doc, path)
    again = results.load(path)
    assert again["overall"]["attainment"] == doc["overall"]["attainment"] == 1.0
    for key in ("arrivals", "met", "status", "attainment_dslo", "completed"):
        assert again["tiers"]["a"][key] == doc["tiers"]["a"][key]
    assert again["tiers"]["a"]["p99_itl_ms"] == pytest.approx(doc["tiers"]["a"]["p99_itl_ms"], abs=1e-3)
    assert again["median_ttft_ms"] == pytest.approx(doc["median_ttft_ms"], abs=1e-3)


async def test_tier_by_api_key_sends_the_key_and_no_tier_header() -> None:
    def script(req: web.Request) -> Script:
        return Script(gaps=[0.01])

    w = _workload(
        [{"name": "gold", **LAT}, {"name": "bulk", "class": "best_effort"}],
        [{"tier": "gold", "share": 1}, {"tier": "bulk", "share": 1}],
        tier_by="api_key",
        api_keys={"gold": "k-gold", "bulk": "k-bulk"},
        requests=8,
    )
    res, _, srv = await _run(script, w)
    by_rid = {s.rid.rsplit("-", 1)[1]: s for s in srv.seen}
    for r in res.records:
        seen = by_rid[str(r.rid)]
        assert seen.tier is None and seen.auth == f"Bearer k-{r.tier}"
