"""Table-driven tests of the SLO-aware policies on hand-built snapshots.

The fleet below uses a static step model: ``step = 10 ms + 0.1 ms · batch`` (no KV or
prefill cost unless a test says so), so a server can hold 99 requests + 1 under a 20 ms
TPOT, 199 + 1 under 30 ms, and is capped at 256 sequences: "full" below means 100
(20 ms) or 200 (30 ms) residents.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from slorouter.clock import ManualClock
from slorouter.models.static import EngineLimits, LinearStep, StaticLatency, StaticLengths
from slorouter.policy import registry
from slorouter.policy.base import ParamError, PolicyContext
from slorouter.state.backends import Backend, BackendSet, Health
from slorouter.state.snapshot import Snapshot
from slorouter.state.tracker import Tracker
from slorouter.values import (
    Defer,
    Dispatch,
    Outcome,
    Reject,
    RequestInfo,
    Slo,
    SloClass,
    Status,
    Tier,
    WhenLate,
)

STEP = LinearStep(c0_s=0.010, c_batch_s=1e-4, c_kv_s=0.0, c_prefill_s=0.0)
LIMITS = EngineLimits(max_num_seqs=256, kv_capacity_tokens=10_000_000, max_batched_tokens=4096)


def tier(name: str, tpot_ms: float | None, rank: int, ttft_ms: float = 1000, late_429: bool = False) -> Tier:
    if tpot_ms is None:
        return Tier(name, Slo(SloClass.BEST_EFFORT), rank=rank)
    late = WhenLate.REJECT if late_429 else WhenLate.BEST_EFFORT
    return Tier(name, Slo(SloClass.LATENCY, ttft_ms / 1e3, tpot_ms / 1e3), rank=rank, when_late=late)


T20, T30, T50 = tier("t20", 20, 0), tier("t30", 30, 1), tier("t50", 50, 2)
BE = tier("batch", None, 3)
TIERS = (T20, T30, T50, BE)


@dataclass
class Fleet:
    """A tracker over named backends ``{id: tier}`` with ``loads[id]`` residents each."""

    bins: Mapping[str, str]
    loads: Mapping[str, int] = field(default_factory=dict)
    resident_tier: Mapping[str, Tier] = field(default_factory=dict)
    unhealthy: tuple[str, ...] = ()
    step: LinearStep = STEP
    resident_prompt: int = 10
    clock: ManualClock = field(default_factory=ManualClock)
    limits: EngineLimits = LIMITS

    def __post_init__(self) -> None:
        backends = BackendSet([Backend(b, f"http://{b}", tier=t) for b, t in self.bins.items()], TIERS)
        health = Health(b for b in self.bins if b not in self.unhealthy)
        self.tracker = Tracker(
            self.clock, backends, health, StaticLatency(self.step, limits=self.limits), StaticLengths(50)
        )
        rid = 10_000
        for b, n in self.loads.items():
            t = self.resident_tier.get(b) or backends.tier_by_name[self.bins[b]]
            for _ in range(n):
                rid += 1
                self.tracker.on_arrival(
                    RequestInfo(rid, t, 0.0, prompt_tokens=10, max_tokens=None, output_bound=50)
                )
                self.tracker.on_dispatch(rid, b)
                self.tracker.on_tokens(rid, 1)

    def snap(self) -> Snapshot:
        return self.tracker.snapshot()


def request(t: Tier, arrival: float = 0.0, prompt: int = 10, rid: int = 1) -> RequestInfo:
    return RequestInfo(rid, t, arrival, prompt_tokens=prompt, max_tokens=None, output_bound=50)


def build(kind: str, **params: Any) -> Any:
    if kind == "polyserve":  # strict feasibility unless a test says otherwise
        params = {"relax": 1.0, **params}
    return registry.build(kind, params, PolicyContext(ManualClock()))


# (name, bins, loads, request tier, params, expected first backend or decision type)
CASES: list[tuple[str, dict[str, str], dict[str, int], Tier, dict[str, Any], str]] = [
    (
        "all feasible, pack -> most loaded",
        {"a": "t30", "b": "t30", "c": "t30"},
        {"a": 10, "b": 50, "c": 30},
        T30,
        {"placement": "pack"},
        "b",
    ),
    (
        "all feasible, spread -> least loaded",
        {"a": "t30", "b": "t30", "c": "t30"},
        {"a": 10, "b": 50, "c": 30},
        T30,
        {"placement": "spread"},
        "a",
    ),
    (
        "pack skips the infeasible most loaded",
        {"a": "t30", "b": "t30"},
        {"a": 200, "b": 120},
        T30,
        {"placement": "pack"},
        "b",
    ),
    (
        "own bin full -> next tighter bin",
        {"a": "t50", "b": "t30", "c": "t20"},
        {"a": 256, "b": 10, "c": 0},
        T50,
        {},
        "b",
    ),
    (
        "tighter host judged by its own TPOT",
        {"a": "t50", "b": "t30", "c": "t20"},
        {"a": 256, "b": 200, "c": 0},
        T50,
        {},
        "c",
    ),
    (
        "lazy: own bin first even if a tighter server is emptier (no lending)",
        {"a": "t50", "b": "t20"},
        {"a": 200, "b": 0},
        T50,
        {"placement": "spread", "lend_room": False},
        "a",
    ),
    (
        "spread: a router that just started lends no room (tests/unit/test_policy_lending.py)",
        {"a": "t50", "b": "t20"},
        {"a": 200, "b": 0},
        T50,
        {"placement": "spread"},
        "a",
    ),
    (
        "pack never lends room (emptied servers are given back)",
        {"a": "t50", "b": "t20"},
        {"a": 200, "b": 0},
        T50,
        {"placement": "pack"},
        "a",
    ),
    ("never downward", {"a": "t20", "b": "t50"}, {"a": 100, "b": 0}, T20, {}, "Defer"),
    (
        "no overflow when disabled",
        {"a": "t50", "b": "t30"},
        {"a": 256, "b": 0},
        T50,
        {"overflow": False},
        "Defer",
    ),
    ("best effort fills looser bins first", {"a": "batch", "b": "t20"}, {"a": 10, "b": 0}, BE, {}, "a"),
    ("best effort never breaks a tight server", {"a": "t20"}, {"a": 100}, BE, {}, "Defer"),
]


@pytest.mark.parametrize(("name", "bins", "loads", "t", "params", "want"), CASES, ids=[c[0] for c in CASES])
def test_polyserve_table(
    name: str, bins: dict[str, str], loads: dict[str, int], t: Tier, params: dict[str, Any], want: str
) -> None:
    f = Fleet(bins, loads)
    d = build("polyserve", **params).select(request(t), f.snap())
    if want in ("Defer", "Reject"):
        assert type(d).__name__ == want, d
    else:
        assert isinstance(d, Dispatch), d
        assert d.backends[0] == want


def test_nothing_feasible_waits_until_the_ttft_can_no_longer_be_met() -> None:
    f = Fleet({"a": "t20"}, {"a": 100})
    p = build("polyserve")
    d = p.select(request(T20, arrival=0.0), f.snap())
    assert isinstance(d, Defer)
    assert d.retry_at is not None
    # latest moment: TTFT deadline (1 s) minus the prefill on an idle server (one step)
    assert d.retry_at == pytest.approx(1.0 - (STEP.c0_s + STEP.c_batch_s))


@pytest.mark.parametrize(
    ("kind", "bins", "loads", "want"),
    [
        # servers whose idle step (25.1 ms) is above the t20 tier's TPOT: a t20 request
        # cannot become feasible by waiting, so it is served at once, best effort, where
        # it breaks no resident's TPOT (before its TTFT deadline has passed) ...
        ("polyserve", {"a": "t20", "b": "t20"}, {"a": 3, "b": 0}, "b"),  # the idle one
        ("slo-pack", {"a": "t30", "b": "t50"}, {"a": 10, "b": 10}, "b"),  # 26.1 ms < 30, 50
        # ... or waits where every server would break a resident's TPOT
        ("polyserve", {"a": "t20"}, {"a": 3}, "Defer"),
        ("slo-pack", {"a": "t30"}, {"a": 60}, "Defer"),  # 31.1 ms > 30
    ],
)
def test_a_tpot_no_idle_server_meets_is_served_best_effort_at_once(
    kind: str, bins: dict[str, str], loads: dict[str, int], want: str
) -> None:
    f = Fleet(bins, loads, step=LinearStep(c0_s=0.025, c_batch_s=1e-4, c_kv_s=0.0, c_prefill_s=0.0))
    d = build(kind).select(request(T20), f.snap())
    if want == "Defer":
        assert isinstance(d, Defer), d
    else:
        assert isinstance(d, Dispatch) and d.backends[0] == want, d
        assert "best effort" in d.reason


@pytest.mark.parametrize(
    ("late_429", "load", "want"),
    [(True, 100, Reject), (True, 0, Reject), (False, 100, Defer), (False, 0, Dispatch)],
)
def test_deadline_passed(late_429: bool, load: int, want: type) -> None:
    t20 = tier("t20", 20, 0, ttft_ms=300, late_429=late_429)
    f = Fleet({"a": "t20"}, {"a": load})
    f.clock.set(5.0)  # the request arrived at 0: its first token was due at 0.3 s
    d = build("polyserve").select(request(t20, arrival=0.0), f.snap())
    assert isinstance(d, want), d
    if isinstance(d, Reject):
        assert d.status == 429  # the admission core adds Retry-After (the predicted drain time)


@pytest.mark.parametrize(
    ("kind", "params", "load", "want"),
    [
        # a late t50 request on a t50 server: step range 10 ms (c0) -> 50 ms; polyserve's
        # default late_fill 0.25 lets it fill up to 20 ms, i.e. 99 residents + itself
        ("polyserve", {}, 98, "a"),
        ("polyserve", {}, 100, "Defer"),  # 20.1 ms: room an on-time request may need
        ("polyserve", {"late_fill": 1.0}, 100, "a"),  # as an on-time one: up to 50 ms
        ("polyserve", {"late_fill": 0.0}, 1, "Defer"),  # idle servers only
        ("polyserve", {"late_fill": 0.0}, 0, "a"),
        ("slo-pack", {}, 256, "Defer"),  # 256 sequences at most, late or not
        ("slo-pack", {}, 100, "a"),  # the baseline fills like an on-time request ...
        ("slo-pack", {"late_fill": 0.25}, 100, "Defer"),  # ... unless told otherwise
    ],
)
def test_a_late_request_takes_only_spare_room(
    kind: str, params: dict[str, Any], load: int, want: str
) -> None:
    t50 = tier("t50", 50, 2, ttft_ms=300)
    f = Fleet({"a": "t50"}, {"a": load})
    f.clock.set(5.0)  # arrived at 0: its first token was due at 0.3 s
    d = build(kind, **params).select(request(t50, arrival=0.0), f.snap())
    if want == "Defer":
        assert isinstance(d, Defer), d
    else:
        assert isinstance(d, Dispatch) and d.backends[0] == want, d
        assert "best effort" in d.reason


@pytest.mark.parametrize(
    ("load", "t", "want"),
    [
        (100, T20, "relaxed"),  # 20.1 ms > 20 ms: nearly feasible, better now than too late
        (140, T20, "Defer"),  # 24.1 ms > 1.15 x 20 ms
        (100, BE, "Defer"),  # best effort has no deadline to lose by waiting: never relaxed
    ],
)
def test_relax_takes_a_nearly_feasible_server_rather_than_wait(load: int, t: Tier, want: str) -> None:
    f = Fleet({"a": "t20"}, {"a": load})
    d = build("polyserve", relax=1.15).select(request(t), f.snap())
    if want == "Defer":
        assert isinstance(d, Defer), d
    else:
        assert isinstance(d, Dispatch) and d.reason == want and d.backends == ("a",)


def test_overflow_keeps_headroom_for_the_host_tier() -> None:
    # t50 own bin full; the t20 host would run at 16.1 ms after placement: feasible for
    # its own tier (<= 20 ms) but above 0.75 x 20 ms, the budget overflow may use
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 256, "b": 60})
    assert isinstance(build("polyserve", overflow_headroom=1.0).select(request(T50), f.snap()), Dispatch)
    assert isinstance(build("polyserve", overflow_headroom=0.75).select(request(T50), f.snap()), Defer)
    assert isinstance(build("polyserve", overflow_headroom=0.75).select(request(T20), f.snap()), Dispatch)


def test_no_overflow_into_a_bin_whose_own_tier_is_waiting() -> None:
    # t50's bin full, the t20 host has room: overflow goes there — unless a t20 request
    # waits in the queue (it was deferred, e.g. for its TTFT): then the room is its own,
    # and looser work overflowing into it would keep it waiting (seen on real vLLM: a
    # tight request waited 6 s while loose overflow refilled its server)
    f = Fleet({"a": "t50", "b": "t20"}, {"a": 256, "b": 10})
    p = build("polyserve")
    assert isinstance(d := p.select(request(T50), f.snap()), Dispatch) and d.backends == ("b",)
    f.tracker.on_arrival(request(T20, rid=77))  # waiting, not dispatched
    assert f.snap().queued.get("t20") == 1
    assert isinstance(p.select(request(T50, rid=2), f.snap()), Defer)
    assert isinstance(d := p.select(request(T20, rid=77), f.snap()), Dispatch) and d.backends == ("b",)
    f.tracker.on_dispatch(77, "b")  # no longer waiting: overflow may come back
    assert isinstance(d := p.select(request(T50, rid=3), f.snap()), Dispatch) and d.backends == ("b",)


def test_never_returns_unhealthy_or_nothing_healthy_is_503() -> None:
    f = Fleet({"a": "t30", "b": "t30"}, {"a": 0, "b": 100}, unhealthy=("a",))
    d = build("polyserve", placement="spread").select(request(T30), f.snap())
    assert isinstance(d, Dispatch) and d.backends == ("b",)
    f2 = Fleet({"a": "t30"}, unhealthy=("a",))
    for kind in ("polyserve", "slo-pack", "static-partition"):
        d2 = build(kind).select(request(T30), f2.snap())
        assert isinstance(d2, Reject) and d2.status == 503


def test_prefill_interference_prefers_the_server_whose_residents_have_slack() -> None:
    # prefill cost 1 ms/token: a 2,000-token prompt stalls residents by ~2 s
    step = LinearStep(0.010, 1e-4, 0.0, 1e-3)
    f = Fleet({"a": "t30", "b": "t30"}, {"a": 5, "b": 5}, step=step)
    # residents of "a" have their next token due soon (arrived long ago); those of "b" just started
    f.clock.set(0.5)
    for r in f.tracker.requests.values():
        if r.backend == "a":
            r.last_token_at = 0.5
            r.output_tokens = 1
    for r in f.tracker.requests.values():
        if r.backend == "b":
            r.req = RequestInfo(r.req.rid, tier("t30", 30, 1, ttft_ms=10_000), 0.4, 10, None, 50)
            r.last_token_at = 0.5
    p = build("polyserve", placement="spread", catchup_tokens=1e9)
    d = p.select(request(T30, arrival=0.5, prompt=2000), f.snap())
    assert isinstance(d, Dispatch) and d.backends[0] == "b"
    d0 = build("polyserve", placement="spread", catchup_tokens=1e9, interference_checks=0).select(
        request(T30, arrival=0.5, prompt=2000), f.snap()
    )
    assert isinstance(d0, Dispatch) and d0.backends[0] == "a"  # ties keep config order without the check


@pytest.mark.parametrize(
    ("bins", "loads", "resident", "t", "want"),
    [
        (
            {"a": "t20", "b": "t50"},
            {"a": 10, "b": 200},
            {},
            T50,
            "b",
        ),  # pack: fullest relative to its tightest TPOT
        ({"a": "t50", "b": "t50"}, {"a": 100, "b": 10}, {"a": T20}, T50, "b"),  # a holds 20 ms work: full
        ({"a": "t50"}, {"a": 100}, {"a": T20}, T50, "Defer"),
    ],
)
def test_slo_pack_judges_by_the_tightest_resident(
    bins: dict[str, str], loads: dict[str, int], resident: dict[str, Tier], t: Tier, want: str
) -> None:
    f = Fleet(bins, loads, resident_tier=resident)
    d = build("slo-pack", placement="pack").select(request(t), f.snap())
    if want == "Defer":
        assert isinstance(d, Defer)
    else:
        assert isinstance(d, Dispatch) and d.backends[0] == want


def test_static_partition_stays_in_its_tier() -> None:
    f = Fleet({"a": "t20", "b": "t30", "c": "t30"}, {"a": 0, "b": 40, "c": 20})
    p = build("static-partition")
    d = p.select(request(T30), f.snap())
    assert isinstance(d, Dispatch) and d.backends == ("c", "b")  # least tokens first, never "a"
    d2 = p.select(request(T50), f.snap())
    assert isinstance(d2, Reject) and d2.status == 503
    d3 = build("static-partition", balance="requests").select(request(T30), f.snap())
    assert isinstance(d3, Dispatch) and d3.backends[0] == "c"


@pytest.mark.parametrize("kind", registry.kinds())
def test_every_policy_builds_and_refuses_unknown_params(kind: str) -> None:
    p = registry.build(kind, {}, PolicyContext(ManualClock()))
    assert p.kind == kind
    with pytest.raises(ParamError, match="unknown parameter"):
        registry.build(kind, {"no_such_param": 1}, PolicyContext(ManualClock()))


@pytest.mark.parametrize(
    ("kind", "params", "path"),
    [
        ("polyserve", {"placement": "diagonal"}, "placement"),
        ("polyserve", {"headroom": 0}, "headroom"),
        ("polyserve", {"placement": "pack", "lend_room": True}, "lend_room"),
        ("polyserve", {"lend_quantile": 1.5}, "lend_quantile"),
        ("slo-pack", {"kv_estimate": "psychic"}, "kv_estimate"),
        ("static-partition", {"balance": 3}, "balance"),
    ],
)
def test_bad_params_name_the_param(kind: str, params: dict[str, Any], path: str) -> None:
    with pytest.raises(ParamError) as e:
        registry.build(kind, params, PolicyContext(ManualClock()))
    assert e.value.errors[0][0] == path


def test_placement_auto_packs_only_with_autoscaling() -> None:
    f = Fleet({"a": "t30", "b": "t30"}, {"a": 10, "b": 50})
    spread = registry.build("polyserve", {}, PolicyContext(ManualClock(), autoscaling=False))
    pack = registry.build("polyserve", {}, PolicyContext(ManualClock(), autoscaling=True))
    assert spread.select(request(T30), f.snap()) == Dispatch(("a", "b"), "feasible")
    assert pack.select(request(T30), f.snap()) == Dispatch(("b", "a"), "feasible")


def test_a_replaced_policy_stops_receiving_the_trackers_change_feed() -> None:
    # 17 servers: polyserve indexes bins of more than 16, and subscribes to Tracker.watch
    f = Fleet({f"s{i}": "t30" for i in range(17)})
    tracker = f.tracker
    first = build("polyserve")
    assert isinstance(first.select(request(T30), f.snap()), Dispatch)
    assert len(tracker._watchers) == 1
    second = build("polyserve")  # e.g. a config reload builds a new policy
    assert isinstance(second.select(request(T30, rid=2), f.snap()), Dispatch)
    assert len(tracker._watchers) == 2
    feed = second._changed
    del first
    gc.collect()
    assert tracker._watchers == [feed]  # the old policy's feed is gone, the new one stays
    tracker.on_arrival(RequestInfo(3, T30, 0.0, prompt_tokens=10, max_tokens=None, output_bound=50))
    tracker.on_dispatch(3, "s5")
    assert feed is not None and "s5" in feed


@pytest.mark.parametrize("kind", ["polyserve", "slo-pack"])
def test_learned_ttft_excess_makes_a_busy_server_infeasible_for_a_tight_ttft(kind: str) -> None:
    # 300 ms TTFT; the step model alone predicts ≈ 35 ms to the first token on either
    # server. What the servers' observed first tokens add (EngineLimits.ttft_extra,
    # learned from TTFTs): 10 ms + 20 ms per running stream -> 210 ms at 10, 410 ms at 20
    t = tier("t50", 50, 2, ttft_ms=300)
    slow = replace(LIMITS, ttft_a_s=0.010, ttft_b_s=0.020)
    for lim, loads, expect in (
        (LIMITS, {"a": 10, "b": 20}, "b"),  # pack: the most loaded
        (slow, {"a": 10, "b": 20}, "a"),  # 410 ms > 300 ms on b
        (slow, {"a": 20, "b": 20}, "Defer"),  # neither answers in time
    ):
        f = Fleet({"a": "t50", "b": "t50"}, loads, limits=lim)
        d = build(kind, placement="pack").select(request(t), f.snap())
        if expect == "Defer":
            assert isinstance(d, Defer), (lim, loads, d)
        else:
            assert isinstance(d, Dispatch) and d.backends[0] == expect, (lim, loads, d)


def test_the_tracker_reports_the_load_a_request_was_placed_at() -> None:
    f = Fleet({"a": "t30", "b": "t30"}, {"a": 3})
    tr = f.tracker
    outs: list[Outcome] = []
    tr.add_listener(outs.append)
    for rid, to in ((1, "a"), (2, "a")):
        tr.on_arrival(RequestInfo(rid, T30, 0.0, prompt_tokens=40, max_tokens=None, output_bound=50))
        tr.on_dispatch(rid, to)
    tr.on_retry(2, "b")  # failed before its first byte: its first token spans two servers
    tr.on_tokens(1, 1)
    tr.on_tokens(2, 1)
    tr.on_finish(1, Status.OK)
    tr.on_finish(2, Status.OK)
    # request 1 met 3 residents (10 prompt + 1 output token each), none waiting to prefill
    assert [o.dispatch_load for o in outs] == [(3, 33, 0), None]


@pytest.mark.parametrize(
    ("late_for", "hold", "want"), [(4.7, 10.0, "Defer"), (4.7, 2.0, "a"), (4.7, None, "Defer")]
)
def test_late_hold_limits_how_long_a_late_request_waits_for_spare_room(
    late_for: float, hold: float | None, want: str
) -> None:
    t50 = tier("t50", 50, 2, ttft_ms=300)
    f = Fleet({"a": "t50"}, {"a": 100})  # 20.1 ms: beyond late_fill 0.25's 20 ms, within 50 ms
    f.clock.set(0.3 + late_for)
    params = {} if hold is None else {"late_hold_s": hold}
    d = build("polyserve", **params).select(request(t50, arrival=0.0), f.snap())
    if want == "Defer":
        assert isinstance(d, Defer), d
    else:
        assert isinstance(d, Dispatch) and d.backends[0] == want and "best effort" in d.reason, d
