"""Properties of every policy on random fleets: a decision only names known, healthy
backends; the SLO-aware policies never pick an infeasible server, and never wait while
a feasible one exists."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from slorouter.clock import ManualClock
from slorouter.models.static import LinearStep
from slorouter.policy import registry
from slorouter.policy.base import PolicyContext
from slorouter.policy.bins import late_at, tier_tightness
from slorouter.policy.feasibility import INF, FeasibilityParams, Need, assess, hopeless, tightest_tpot
from slorouter.policy.polyserve import LATE_FILL
from slorouter.values import Defer, Dispatch, Reject, RequestInfo
from tests.unit.test_policy_table import BE, T20, T30, T50, Fleet, tier

OVERFLOW_HEADROOM, RELAX = 0.95, 1.15  # polyserve's defaults
TIERS = (T20, T30, T50, BE, tier("t20q", 20, 0, ttft_ms=150, late_429=True))
BIN_NAMES = ("t20", "t30", "t50", "batch")

fleets = st.lists(
    st.tuples(st.sampled_from(BIN_NAMES), st.integers(0, 200), st.booleans()), min_size=1, max_size=8
)
requests = st.tuples(st.sampled_from(TIERS), st.integers(1, 30_000), st.floats(0.0, 2.0))
# KV and prefill cost something here, so load, prompt size and waiting time all matter
STEP = LinearStep(c0_s=0.008, c_batch_s=6e-5, c_kv_s=1e-7, c_prefill_s=2e-5)
POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("polyserve", {"placement": "pack"}),
    ("polyserve", {"placement": "spread"}),
    ("slo-pack", {"placement": "pack"}),
    ("static-partition", {}),
    ("round-robin", {}),
    ("least-tokens", {}),
    ("power-of-two", {}),
    ("random", {}),
    ("least-request", {}),
]


def _setup(spec: list[tuple[str, int, bool]]) -> Fleet:
    bins = {f"s{i}": b for i, (b, _, _) in enumerate(spec)}
    loads = {f"s{i}": n for i, (_, n, _) in enumerate(spec)}
    down = tuple(f"s{i}" for i, (_, _, ok) in enumerate(spec) if not ok)
    return Fleet(bins, loads, unhealthy=down, step=STEP, resident_prompt=400)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets, requests)
# a t30 request on a fleet of two idle t20 servers: polyserve (spread, lending on) borrows one
# into a new t30 bin while placing it; recording the lent-room occupancy then read the old bins
@example(spec=[("t20", 0, True), ("t20", 0, True)], rq=(T30, 1, 0.0))
def test_decisions_name_only_known_healthy_backends(spec: list[tuple[str, int, bool]], rq: Any) -> None:
    f = _setup(spec)
    t, prompt, now = rq
    f.clock.set(now)
    req = RequestInfo(1, t, 0.0, prompt_tokens=prompt, max_tokens=None, output_bound=50)
    snap = f.snap()
    for kind, params in POLICIES:
        d = registry.build(kind, params, PolicyContext(ManualClock(), seed=3)).select(req, snap)
        if isinstance(d, Dispatch):
            assert d.backends, kind
            assert len(set(d.backends)) == len(d.backends), kind
            assert all(b in snap.healthy and b in snap.backends for b in d.backends), (kind, d)
        else:
            assert isinstance(d, Defer | Reject)


def _feasible(
    f: Fleet, req: RequestInfo, kind: str, late: bool, relax: float = 1.0, no_hope: bool = False
) -> list[str]:
    """Brute force: every server the policy may use on which ``req`` is feasible (for
    polyserve, a tighter bin's server with its overflow headroom)."""
    snap = f.snap()
    tpots = {t.name: (t.slo.tpot_s if t.slo.tpot_s is not None else INF) for t in snap.backends.tiers}
    need = Need(req, snap.now, late, hopeless=no_hope)
    late_fill = LATE_FILL if kind == "polyserve" else 1.0  # slo-pack: the baseline's 1.0
    base = FeasibilityParams(headroom=relax, late_fill=late_fill)
    out = []
    for b in snap.eligible(None):
        load = snap.loads[b.id]
        lat = snap.latency
        bin_t = tier_tightness(snap.backends.tier_by_name.get(b.tier))
        fp = base
        if kind == "polyserve":
            if bin_t > tier_tightness(req.tier):
                continue  # never downward
            if bin_t < tier_tightness(req.tier):
                # polyserve's overflow_reserve (default 1): the host keeps room for one more of its own
                fp = FeasibilityParams(headroom=relax * OVERFLOW_HEADROOM, late_fill=late_fill, reserve=1)
            tau = bin_t.tpot if bin_t.paced else (tightest_tpot(load, tpots) if load.tier_counts else INF)
        else:
            tau = tightest_tpot(load, tpots) if load.tier_counts else INF
        if assess(need, load, lat.linear(b.id), lat.limits(b.id), tau, fp) >= 0:
            out.append(b.id)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets, requests, st.sampled_from(["polyserve", "slo-pack"]), st.sampled_from(["pack", "spread"]))
def test_never_infeasible_never_waiting_while_a_feasible_server_exists(
    spec: list[tuple[str, int, bool]], rq: Any, kind: str, placement: str
) -> None:
    f = _setup(spec)
    t, prompt, now = rq
    f.clock.set(now)
    req = RequestInfo(1, t, 0.0, prompt_tokens=prompt, max_tokens=None, output_bound=50)
    snap = f.snap()
    if not snap.healthy:
        return
    pool = snap.eligible(None)
    at = late_at(req, snap, pool[0].id)
    late = at is not None and now > at
    feasible = _feasible(f, req, kind, late)
    params: dict[str, Any] = {"placement": placement}
    if kind == "polyserve":
        params["rebalance"] = False  # fixed bins here; moves: tests/unit/test_policy_rebalance.py
    d = registry.build(kind, params, PolicyContext(ManualClock())).select(req, snap)
    # a request no server meets even alone is served best effort at once (as a late one)
    fp = FeasibilityParams()
    ids = [b.id for b in pool]
    if kind == "polyserve":
        ids = [
            b.id
            for b in pool
            if tier_tightness(snap.backends.tier_by_name.get(b.tier)) <= tier_tightness(req.tier)
        ]
    no_hope = not late and hopeless(req, ids, snap.latency, fp, RELAX if kind == "polyserve" else 1.0)
    if isinstance(d, Dispatch) and d.reason == "relaxed":
        # nothing was feasible; the chosen server is within the relaxed thresholds
        assert not feasible and not late, (d, feasible)
        assert d.backends[0] in _feasible(f, req, kind, late, relax=RELAX), d
    elif isinstance(d, Dispatch) and d.reason.startswith("best effort"):
        assert no_hope and not feasible, d
        assert d.backends[0] in _feasible(f, req, kind, True, no_hope=True), d  # slows no resident
    elif isinstance(d, Dispatch) and d.reason.endswith("on an idle server"):
        assert late or no_hope, d
        assert not snap.loads[d.backends[0]].running, d
        assert not _feasible(f, req, kind, True, no_hope=no_hope), d  # nothing else takes it
    elif isinstance(d, Dispatch):
        assert d.backends[0] in feasible, (d, feasible)
    elif isinstance(d, Reject):
        assert d.status == 503 or (d.status == 429 and late and t.rejects_late), d
    else:
        assert not feasible, (d, feasible)
        if no_hope:  # waits only where every server would break a resident's TPOT
            assert not _feasible(f, req, kind, True, no_hope=True), d
