"""Any interleaving of arrival, dispatch, retry, tokens, usage, finish, error and
client-cancel leaves every counter exactly zero once every request is finished,
and keeps the per-backend sums equal to the sums over resident requests throughout."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slorouter.clock import ManualClock
from slorouter.models.static import StaticLatency, StaticLengths
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.load import SLACK_WINDOW, banked
from slorouter.state.tracker import Tracker
from slorouter.values import RequestInfo, Slo, SloClass, Status, Tier

TIERS = (
    Tier("fast", Slo(SloClass.LATENCY, 0.5, 0.02), rank=0),
    Tier("slow", Slo(SloClass.LATENCY, 2.0, 0.1), rank=1),
    Tier("batch", Slo(SloClass.BEST_EFFORT), rank=2),
)
BACKENDS = BackendSet(
    [Backend(f"b{i}", f"http://127.0.0.1:{9000 + i}", tier=TIERS[i % 2].name) for i in range(3)], TIERS
)

op = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, 2), st.integers(1, 500), st.integers(1, 50)),
    st.tuples(st.just("dispatch"), st.integers(0, 30), st.integers(0, 2)),
    st.tuples(st.just("retry"), st.integers(0, 30), st.integers(0, 2)),
    st.tuples(st.just("tokens"), st.integers(0, 30), st.integers(1, 4)),
    st.tuples(st.just("usage"), st.integers(0, 30), st.integers(0, 600), st.integers(0, 80)),
    st.tuples(st.just("finish"), st.integers(0, 30), st.sampled_from(list(Status))),
    st.tuples(st.just("tick"), st.floats(0, 0.5)),
)


def slack_summary(t: Tracker, backend_id: str) -> list[float]:
    """The slack of the newest SLACK_WINDOW residents that decode with a TPOT, computed
    from the per-request records (what BackendLoad.slack must summarise)."""
    out = []
    for r in list(reversed(t.residents(backend_id)))[:SLACK_WINDOW]:
        slo = r.req.tier.slo
        if r.last_token_at is None or slo.tpot_s is None or slo.ttft_s is None:
            continue
        due = r.req.arrival + slo.ttft_s + (r.output_tokens - 1) * slo.tpot_s
        out.append(due - r.last_token_at)
    return out


def check_sums(t: Tracker) -> None:
    for load in t.loads.values():
        rs = t.residents(load.backend_id)
        assert load.running == len(rs)
        assert [banked(e) for e in load.slack] == slack_summary(t, load.backend_id)
        assert load.prompt_tokens == sum(r.prompt_tokens for r in rs)
        assert load.output_tokens == sum(r.output_tokens for r in rs)
        assert load.peak_kv == sum(r.prompt_tokens + max(r.bound, r.output_tokens) for r in rs)
        assert load.prefilling == sum(1 for r in rs if r.first_token_at is None)
        assert load.prefill_tokens == sum(r.prompt_tokens for r in rs if r.first_token_at is None)
        assert sum(load.tier_counts.values()) == len(rs)
    queued = sum(1 for r in t.requests.values() if r.backend is None)
    assert sum(t.queued.values()) == queued


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=120))
def test_counters_return_to_zero(ops: list[tuple[object, ...]]) -> None:
    clock = ManualClock()
    t = Tracker(clock, BACKENDS, Health(b.id for b in BACKENDS.backends), StaticLatency(), StaticLengths(16))
    outcomes: list[int] = []
    t.add_listener(lambda o: outcomes.append(o.rid))
    rid = 0
    for o in ops:
        kind = o[0]
        if kind == "arrive":
            rid += 1
            tier = TIERS[int(o[1])]  # type: ignore[call-overload]
            t.on_arrival(RequestInfo(rid, tier, clock.now(), int(o[2]), int(o[3]), min(int(o[3]), 16)))  # type: ignore[call-overload]
        elif kind == "dispatch":
            t.on_dispatch(int(o[1]), f"b{o[2]}")  # type: ignore[call-overload]
        elif kind == "retry":
            t.on_retry(int(o[1]), f"b{o[2]}")  # type: ignore[call-overload]
        elif kind == "tokens":
            t.on_tokens(int(o[1]), int(o[2]))  # type: ignore[call-overload]
        elif kind == "usage":
            t.on_usage(int(o[1]), int(o[2]), int(o[3]))  # type: ignore[call-overload]
        elif kind == "finish":
            t.on_finish(int(o[1]), o[2])  # type: ignore[arg-type, call-overload]
        else:
            clock.advance(float(o[1]))  # type: ignore[arg-type]
        check_sums(t)
    for r in list(t.requests):
        assert t.on_finish(r, Status.CANCELLED) is not None
        assert t.on_finish(r, Status.OK) is None  # exactly once
    check_sums(t)
    assert t.all_zero()
    assert sorted(outcomes) == list(range(1, rid + 1))  # every arrival finalized exactly once
