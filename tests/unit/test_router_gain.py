"""The router's SLO verdicts and service gain (/metrics), on a real tracker driven by a
manual clock: what slojudge says of the same token times, to the token. The deadline
cases fail on the old code, which counted every finished deadline, workflow and
best-effort request in ``slorouter_dslo_met_total`` (its per-token lateness stays
``-inf`` without a TTFT)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import slojudge
from slorouter.clock import ManualClock
from slorouter.metrics import build_registry
from slorouter.metrics.gain import GainMetrics
from slorouter.models.static import StaticLatency, StaticLengths
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Slo, SloClass, Status, Tier

CHAT = Tier("chat", Slo(SloClass.LATENCY, ttft_s=0.5, tpot_s=0.02), weight=3.0, rank=0)
TOOLS = Tier("tools", Slo(SloClass.DEADLINE, deadline_s=20.0), weight=2.0, rank=1)
AGENTS = Tier("agents", Slo(SloClass.WORKFLOW, deadline_s=30.0), weight=2.0, rank=2)
BATCH = Tier("batch", Slo(SloClass.BEST_EFFORT), weight=0.2, rank=3)
TIERS = (CHAT, TOOLS, AGENTS, BATCH)


class Router:
    def __init__(self) -> None:
        self.clock = ManualClock(100.0)
        backends = BackendSet([Backend("b0", "http://127.0.0.1:9", tier="chat")], TIERS)
        self.tracker = Tracker(self.clock, backends, Health(["b0"]), StaticLatency(), StaticLengths(64))
        self.metrics = GainMetrics()
        self.tracker.add_listener(self.metrics.observe)
        self.registry = build_registry(self.metrics)
        self.rid = 0

    def run(
        self,
        tier: Tier,
        chunks: Sequence[tuple[float, int]],
        *,
        prompt: int = 100,
        end: float | None = None,
        status: Status = Status.OK,
        usage: int | None = None,
        workflow: str | None = None,
        deadline_at: float | None = None,
    ) -> RequestInfo:
        """A request arriving now; ``chunks`` are (seconds after arrival, tokens)."""
        self.rid += 1
        t0 = self.clock.now()
        if deadline_at is None and tier.slo.deadline_s is not None:
            deadline_at = t0 + tier.slo.deadline_s
        req = RequestInfo(self.rid, tier, t0, prompt, 256, 64, workflow_id=workflow, deadline_at=deadline_at)
        self.tracker.on_arrival(req)
        self.tracker.on_dispatch(req.rid, "b0")
        for dt, n in chunks:
            self.clock.set(t0 + dt)
            self.tracker.on_tokens(req.rid, n)
        if usage is not None:
            self.tracker.on_usage(req.rid, prompt, usage)
        self.clock.set(t0 + (end if end is not None else (chunks[-1][0] if chunks else 0.0)))
        self.tracker.on_finish(req.rid, status)
        return req

    def families(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for fam in text_string_to_metric_families(generate_latest(self.registry).decode()):
            for s in fam.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out


def tier_value(fams: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, tier: str) -> float:
    return fams.get(name, {}).get((("tier", tier),), 0.0)


def test_a_late_deadline_request_is_missed_not_met() -> None:
    r = Router()
    r.run(TOOLS, [(25.0, 40)], prompt=1000)  # non-streaming body 25 s after arrival: 5 s late
    r.run(TOOLS, [(12.0, 30)], prompt=800)  # in time
    f = r.families()
    assert tier_value(f, "slorouter_dslo_met_total", "tools") == 1
    assert f["slorouter_deadline_met_total"][(("class", "deadline"), ("tier", "tools"))] == 1
    assert f["slorouter_deadline_missed_total"][(("class", "deadline"), ("tier", "tools"))] == 1
    assert tier_value(f, "slorouter_service_gain_total", "tools") == pytest.approx(
        2.0 * slojudge.value(800, 30)
    )


def test_failed_and_rejected_deadline_requests_are_misses() -> None:
    r = Router()
    r.run(TOOLS, [(1.0, 3)], status=Status.ERROR)
    r.run(TOOLS, [], status=Status.REJECTED)
    f = r.families()
    assert tier_value(f, "slorouter_dslo_met_total", "tools") == 0
    assert f["slorouter_deadline_missed_total"][(("class", "deadline"), ("tier", "tools"))] == 2
    assert tier_value(f, "slorouter_service_gain_total", "tools") == 0


def test_best_effort_has_no_slo_to_meet_but_its_completed_work_counts() -> None:
    r = Router()
    r.run(BATCH, [(0.1 * i, 1) for i in range(1, 11)], prompt=2048)
    f = r.families()
    assert tier_value(f, "slorouter_dslo_met_total", "batch") == 0
    assert not any(dict(k).get("tier") == "batch" for k in f.get("slorouter_deadline_met_total", {}))
    assert tier_value(f, "slorouter_service_gain_total", "batch") == pytest.approx(
        0.2 * slojudge.value(2048, 10)
    )


def test_a_workflow_counts_only_if_its_last_call_is_in_time() -> None:
    r = Router()
    due = r.clock.now() + 30.0  # the router resolves one deadline per workflow id
    r.run(AGENTS, [(5.0, 20)], prompt=300, workflow="w1", deadline_at=due)
    r.run(AGENTS, [(10.0, 10)], prompt=400, workflow="w1", deadline_at=due)  # ends at +15 s
    r.run(AGENTS, [(20.0, 10)], prompt=500, workflow="w1", deadline_at=due)  # ends at +35 s: late
    start = r.clock.now()
    due2 = start + 30.0
    r.run(AGENTS, [(4.0, 8)], prompt=200, workflow="w2", deadline_at=due2)
    r.run(AGENTS, [(6.0, 9)], prompt=250, workflow="w2", deadline_at=due2)
    f = r.families()
    lbl = (("class", "workflow"), ("tier", "agents"))
    assert f["slorouter_deadline_met_total"][lbl] == 4 and f["slorouter_deadline_missed_total"][lbl] == 1
    assert tier_value(f, "slorouter_dslo_met_total", "agents") == 4
    gain = tier_value(f, "slorouter_service_gain_total", "agents")
    lost = tier_value(f, "slorouter_service_gain_forfeited_total", "agents")
    assert lost == pytest.approx(2.0 * (slojudge.value(300, 20) + slojudge.value(400, 10)))
    # net = slojudge on the whole workflows: w1 missed (its last call was late), w2 met
    w1 = [
        slojudge.Call(True, p, o, finished_at=t)
        for p, o, t in ((300, 20, 105), (400, 10, 115), (500, 10, 135))
    ]
    w2 = [slojudge.Call(True, p, o, finished_at=start + t) for p, o, t in ((200, 8, 4), (250, 9, 10))]
    expected = slojudge.judge("workflow", 2.0, w1, due).gain + slojudge.judge("workflow", 2.0, w2, due2).gain
    assert expected == pytest.approx(2.0 * (slojudge.value(200, 8) + slojudge.value(250, 9)))
    assert gain - lost == pytest.approx(expected)
    assert r.metrics.net_gain("agents") == pytest.approx(expected)


def test_latency_gain_is_slojudge_on_the_same_chunk_times() -> None:
    r = Router()
    # 30 tokens: TTFT met (0.4 s), then 20 ms apart, a 200 ms stall after token 9, a 3-token chunk
    times = [0.4 + 0.02 * i for i in range(10)] + [0.4 + 0.02 * i + 0.2 for i in range(10, 27)]
    chunks = [(t, 1) for t in times] + [(times[-1] + 0.02, 3)]
    r.run(CHAT, chunks, prompt=700)
    f = r.families()
    arrival = 100.0
    due0 = arrival + 0.5
    chk = slojudge.check_chunks([arrival + t for t, _ in chunks], [n for _, n in chunks], due0, 0.02)
    assert chk.tokens == 30 and 0 < chk.on_time < 30  # the stall made some tokens late, not all
    call = slojudge.Call(True, 700, 30, on_time_tokens=chk.on_time, first_on_time=chk.first_on_time)
    expected = slojudge.judge("latency", 3.0, [call]).gain
    assert tier_value(f, "slorouter_service_gain_total", "chat") == pytest.approx(expected)
    assert tier_value(f, "slorouter_dslo_met_total", "chat") == 0
    r.run(CHAT, [(0.3 + 0.02 * i, 1) for i in range(5)], prompt=50)  # all on time: met
    assert tier_value(r.families(), "slorouter_dslo_met_total", "chat") == 1


def test_tokens_the_engine_reports_beyond_the_chunks_are_judged_when_reported() -> None:
    r = Router()
    # 4 chunks counted as 1 token each; the usage says 10 (chunks carried several)
    r.run(CHAT, [(0.3, 1), (0.32, 1), (0.34, 1), (0.36, 1)], usage=10, end=0.36, prompt=10)
    f = r.families()
    # reported at +0.36 s, before the first token is even due (+0.5 s): all 10 on time
    assert tier_value(f, "slorouter_service_gain_total", "chat") == pytest.approx(
        3.0 * slojudge.value(10, 10)
    )
    r2 = Router()
    req = RequestInfo(1, CHAT, 100.0, 10, 256, 64)
    r2.tracker.on_arrival(req)
    r2.tracker.on_dispatch(1, "b0")
    r2.clock.set(100.3)
    r2.tracker.on_tokens(1, 1)
    r2.clock.set(101.0)  # 6 more tokens reported 0.5 s after due0: tokens 1..6 due by +0.62 s
    r2.tracker.on_usage(1, 10, 7)
    out = r2.tracker.on_finish(1, Status.OK)
    assert out is not None and out.output_tokens == 7 and out.on_time_tokens == 1
