"""Eligibility is part of what the policy sees: a backend that does not serve the
request's model (or its API's engine) is never ranked, so a multi-model fleet never
answers 503 while an eligible server sits idle."""

from __future__ import annotations

import pytest

from slorouter.admission import AdmissionCore
from slorouter.clock import ManualClock
from slorouter.models.static import EngineLimits, LinearStep, StaticLatency, StaticLengths
from slorouter.policy import registry
from slorouter.policy.base import PolicyContext
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.tracker import Tracker
from slorouter.values import Dispatch, Engine, RequestInfo, Slo, SloClass, Tier

STEP = LinearStep(c0_s=0.010, c_batch_s=1e-4, c_kv_s=0.0, c_prefill_s=0.0)
LIMITS = EngineLimits(max_num_seqs=256, kv_capacity_tokens=10_000_000, max_batched_tokens=4096)
TIER = Tier("chat", Slo(SloClass.LATENCY, 1.0, 0.05))


def fleet() -> tuple[Tracker, ManualClock]:
    # three idle servers of model "small", one loaded server of model "big" (last in
    # every load-based ranking), one TGI server serving anything
    bs = [Backend(f"s{i}", f"http://s{i}", tier="chat", models=("small",)) for i in range(3)]
    bs.append(Backend("big0", "http://big0", tier="chat", models=("big",)))
    bs.append(Backend("tgi0", "http://tgi0", engine=Engine.TGI, tier="chat"))
    clock = ManualClock()
    t = Tracker(
        clock,
        BackendSet(bs, (TIER,)),
        Health(b.id for b in bs),
        StaticLatency(STEP, limits=LIMITS),
        StaticLengths(50),
    )
    for rid in range(100, 140):  # load the "big" server
        t.on_arrival(RequestInfo(rid, TIER, 0.0, 10, None, 50, model="big"))
        t.on_dispatch(rid, "big0")
    return t, clock


def req(rid: int, model: str = "", engines: frozenset[Engine] | None = None) -> RequestInfo:
    return RequestInfo(rid, TIER, 0.0, 10, None, 50, model=model, engines=engines)


@pytest.mark.parametrize("kind", registry.kinds())
def test_every_policy_ranks_only_eligible_backends(kind: str) -> None:
    t, clock = fleet()
    core = AdmissionCore(registry.build(kind, {}, PolicyContext(clock, seed=1)), t)
    for rid, (model, engines, allowed) in enumerate(
        [
            ("big", None, {"big0", "tgi0"}),
            ("small", None, {"s0", "s1", "s2", "tgi0"}),
            ("", frozenset({Engine.TGI}), {"tgi0"}),
            ("big", frozenset({Engine.VLLM}), {"big0"}),
        ]
    ):
        r = req(rid, model, engines)
        t.on_arrival(r)
        decided = core.arrive(r)
        assert len(decided) == 1, (kind, model, decided)
        d = decided[0][1]
        assert isinstance(d, Dispatch), (kind, model, d)
        assert set(d.backends) <= allowed, (kind, model, d.backends)


def test_snapshot_views_per_pool() -> None:
    t, _ = fleet()
    everyone = t.snapshot(req(1))
    assert everyone.healthy == {"s0", "s1", "s2", "big0", "tgi0"}
    big = t.snapshot(req(2, "big"))
    assert big.healthy == {"big0", "tgi0"} and [b.id for b in big.eligible("chat")] == ["big0", "tgi0"]
    # the same pool keeps its generation key; other pools and a health change get new ones
    assert t.snapshot(req(3, "big")).fleet == big.fleet != everyone.fleet
    t.health.set("tgi0", False)
    after = t.snapshot(req(4, "big"))
    assert after.fleet != big.fleet and after.healthy == {"big0"}
    # a model no vLLM server serves: configured nowhere, an empty view (the TGI server,
    # which lists no models, serves any model over its own API)
    vllm = frozenset({Engine.VLLM})
    assert not t.pools.configured(req(5, "unknown", vllm))
    assert not t.snapshot(req(5, "unknown", vllm)).healthy
    assert t.pools.configured(req(5, "unknown"))
    # a swapped backend set starts new generations
    t.set_backends(BackendSet(t.backends.backends[:2], (TIER,)))
    assert t.snapshot(req(6, "big")).fleet[0] != after.fleet[0]
