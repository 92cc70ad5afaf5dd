"""Dynamic tier bins of ``polyserve`` (``rebalance``), on hand-built snapshots.

The fleet of :mod:`tests.unit.test_policy_table`: ``step = 10 ms + 0.1 ms · batch``, so a
server holds 99 + 1 requests under 20 ms, 199 + 1 under 30 ms, 256 (the cap) under 50 ms.
A bin's spare room (``slorouter.policy.rebalance.spare``) is ``1 − 0.1 ms·n / (τ − 10 ms)``:
``1 − n/100`` at 20 ms, ``1 − n/400`` at 50 ms.
"""

from __future__ import annotations

from typing import Any

import pytest

from slorouter.policy.base import ParamError
from slorouter.values import Defer, Dispatch, RequestInfo, Tier
from tests.unit.test_policy_table import T20, T50, Fleet, build, request


def poly(**params: Any) -> Any:
    return build("polyserve", placement="spread", **params)


def bin_of(policy: Any, fleet: Fleet, bid: str) -> float:
    bins = policy._get_bins(fleet.snap())
    return float(next(bins.taus[i] for i, ids in enumerate(bins.bins) if bid in ids).tpot)


# (name, bins, loads, resident tier override, request tier, expected first backend or
#  "Defer", expected bin tightness of that backend afterwards (None: no move))
CASES: list[tuple[str, dict[str, str], dict[str, int], dict[str, Tier], Tier, str, float | None]] = [
    (
        "idle tight server is lent to a full loose bin",
        {"a": "t50", "b": "t20", "c": "t20", "d": "t20"},
        {"a": 256, "b": 0, "c": 10, "d": 20},
        {},
        T50,
        "b",
        0.05,
    ),
    (
        "a tight server holding tight work is not lent: plain overflow",
        {"a": "t50", "b": "t20", "c": "t20", "d": "t20"},
        {"a": 256, "b": 1, "c": 10, "d": 20},
        {},
        T50,
        "b",
        0.02,
    ),
    (
        "the tight bin without room to spare lends nothing",
        {"a": "t50", "b": "t20", "c": "t20"},
        {"a": 256, "b": 0, "c": 60},
        {},
        T50,
        "b",
        0.02,
    ),
    (
        "full tight bin borrows the least loaded feasible loose server",
        {"a": "t20", "b": "t50", "c": "t50", "d": "t50"},
        {"a": 100, "b": 30, "c": 150, "d": 10},
        {},
        T20,
        "d",
        0.02,
    ),
    (
        "never borrows a server whose residents the tight TPOT would break",
        {"a": "t20", "b": "t50", "c": "t50"},
        {"a": 100, "b": 150, "c": 120},
        {},
        T20,
        "Defer",
        None,
    ),
    (
        "a loose bin without room to spare gives nothing",
        {"a": "t20", "b": "t50", "c": "t50"},
        {"a": 100, "b": 10, "c": 250},
        {},
        T20,
        "Defer",
        None,
    ),
    (
        "a loose bin's last server stays",
        {"a": "t20", "b": "t50"},
        {"a": 100, "b": 0},
        {},
        T20,
        "Defer",
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "bins", "loads", "resident_tier", "t", "want", "want_bin"), CASES, ids=[c[0] for c in CASES]
)
def test_rebalance_table(
    name: str,
    bins: dict[str, str],
    loads: dict[str, int],
    resident_tier: dict[str, Tier],
    t: Tier,
    want: str,
    want_bin: float | None,
) -> None:
    f = Fleet(bins, loads, resident_tier)
    p = poly()
    d = p.select(request(t), f.snap())
    if want == "Defer":
        assert isinstance(d, Defer), d
        assert p.moves.moves == 0
        return
    assert isinstance(d, Dispatch) and d.backends[0] == want, d
    assert bin_of(p, f, want) == pytest.approx(want_bin)
    moved = want_bin is not None and want_bin != t_of(bins[want])
    assert p.moves.moves == (1 if moved else 0)


def t_of(tier_name: str) -> float:
    return {"t20": 0.02, "t30": 0.03, "t50": 0.05}[tier_name]


def test_off_never_moves() -> None:
    f = Fleet({"a": "t20", "b": "t50", "c": "t50", "d": "t50"}, {"a": 100, "b": 30, "c": 150, "d": 10})
    p = poly(rebalance=False)
    assert p.moves is None
    assert isinstance(p.select(request(T20), f.snap()), Defer)


def test_a_moved_server_serves_its_new_bin_and_leaves_the_old_one() -> None:
    f = Fleet({"a": "t50", "b": "t20", "c": "t20", "d": "t20"}, {"a": 256, "b": 0, "c": 10, "d": 20})
    p = poly()
    assert p.select(request(T50), f.snap()).backends[0] == "b"
    # a tight request no longer goes to b (spread would pick the emptiest tight server)
    d = p.select(request(T20, rid=2), f.snap())
    assert isinstance(d, Dispatch) and d.backends[0] == "c", d
    assert "b" not in d.backends


def test_hysteresis_one_server_per_bin_per_receive_interval() -> None:
    f = Fleet(
        {"a": "t20", "b": "t50", "c": "t50", "d": "t50", "e": "t50"},
        {"a": 100, "b": 10, "c": 20, "d": 30, "e": 40},
    )
    p = poly(rebalance_hold_s=5.0, rebalance_receive_s=2.0)
    assert p.select(request(T20), f.snap()).backends[0] == "b"
    # b fills up with tight work: the tight bin is pressured again at once
    for rid in range(100, 190):
        f.tracker.on_arrival(RequestInfo(rid, T20, 0.0, prompt_tokens=10, max_tokens=None, output_bound=50))
        f.tracker.on_dispatch(rid, "b")
    assert isinstance(p.select(request(T20, rid=2), f.snap()), Defer)  # within the interval
    f.clock.set(1.9)
    assert isinstance(p.select(request(T20, arrival=1.9, rid=3), f.snap()), Defer)
    assert p.moves.moves == 1
    f.clock.set(2.0)  # the bin may receive again (b's own hold, 5 s, is not what limits it)
    d = p.select(request(T20, arrival=2.0, rid=4), f.snap())
    assert isinstance(d, Dispatch) and d.backends[0] == "c", d
    assert p.moves.moves == 2


def test_moved_server_does_not_move_back_within_the_hold() -> None:
    # c is lent to t50; right after, t20 is pressured and c (empty, feasible) would fit
    f = Fleet({"a": "t50", "b": "t20", "c": "t20", "d": "t20"}, {"a": 256, "b": 30, "c": 0, "d": 30})
    p = poly(rebalance_hold_s=5.0)
    assert p.select(request(T50), f.snap()).backends[0] == "c"
    for bid in ("b", "d"):
        for rid in range(1000 + 100 * ord(bid), 1000 + 100 * ord(bid) + 70):
            f.tracker.on_arrival(
                RequestInfo(rid, T20, 0.0, prompt_tokens=10, max_tokens=None, output_bound=50)
            )
            f.tracker.on_dispatch(rid, bid)
    f.clock.set(1.0)
    d = p.select(request(T20, arrival=1.0, rid=2), f.snap())
    assert isinstance(d, Defer), d
    assert bin_of(p, f, "c") == pytest.approx(0.05)


def test_donor_with_queued_requests_gives_nothing() -> None:
    f = Fleet({"a": "t20", "b": "t50", "c": "t50", "d": "t50"}, {"a": 100, "b": 30, "c": 150, "d": 10})
    f.tracker.on_arrival(RequestInfo(99, T50, 0.0, prompt_tokens=10, max_tokens=None, output_bound=50))
    p = poly()
    assert isinstance(p.select(request(T20), f.snap()), Defer)


def test_configured_bins_win_over_an_override() -> None:
    f = Fleet({"a": "t50", "b": "t20", "c": "t20", "d": "t20"}, {"a": 256, "b": 0, "c": 10, "d": 20})
    p = poly()
    p.select(request(T50), f.snap())
    assert bin_of(p, f, "b") == pytest.approx(0.05)
    f.tracker.set_backends(f.snap().backends.with_tiers({"b": "t30"}))
    assert bin_of(p, f, "b") == pytest.approx(0.03)


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"rebalance": "yes"}, "rebalance"),
        ({"rebalance_hold_s": -1}, "rebalance_hold_s"),
        ({"rebalance_receive_s": "soon"}, "rebalance_receive_s"),
    ],
)
def test_bad_rebalance_params_name_the_param(params: dict[str, Any], path: str) -> None:
    with pytest.raises(ParamError) as e:
        build("polyserve", **params)
    assert [p for p, _ in e.value.errors] == [path]
