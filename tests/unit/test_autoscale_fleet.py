"""The scaler across router processes, alone: the per-process counters and their sum
(:mod:`slorouter.autoscale.feed`), the hand-over of the scaler's state
(:mod:`slorouter.autoscale.handover`), and the rows carrying them."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from slorouter.actuation.leadscale import SharedScaling
from slorouter.autoscale.feed import FINISHED, MET, FeedMerge, LocalFeed, absorb
from slorouter.autoscale.handover import export_state, rebase, resume
from slorouter.autoscale.scaler import Scaler
from slorouter.clock import ManualClock
from slorouter.config.autoscale import AutoscaleConfig
from slorouter.state.backends import BackendSet
from slorouter.state.rows import Row
from slorouter.values import Outcome, Slo, SloClass, Status, Tier

TIER = Tier("chat", Slo(SloClass.LATENCY, 1.0, 0.05), rank=0)


def outcome(ok: bool, at: float, late: float = -0.1) -> Outcome:
    return Outcome(
        rid=1,
        tier="chat",
        backend="b",
        status=Status.OK if ok else Status.ERROR,
        arrival=at - 1.0,
        finished_at=at,
        prompt_tokens=100,
        output_tokens=20,
        max_lateness_s=late,
    )


def test_the_leader_sums_every_process_increments_once() -> None:
    a, b = LocalFeed([TIER], boot="a1"), LocalFeed([TIER], boot="b1")
    merge = FeedMerge()
    for _ in range(3):
        a.observe_outcome(outcome(True, 1.0))
    b.observe_outcome(outcome(True, 1.0, late=0.5))  # finished, missed its SLO
    # a fresh merge (a new leader) takes what happened before as its baseline
    assert merge.collect({"a": a.document(1.0, 100.0), "b": b.document(1.0, 100.0)}, 100.0) == {}
    for _ in range(2):
        a.observe_outcome(outcome(True, 2.0))
    b.observe_outcome(outcome(True, 2.0))
    b.on_defer("chat", 2.0)
    got = merge.collect({"a": a.document(2.0, 101.0), "b": b.document(2.0, 101.0)}, 101.0)["chat"]
    assert got.counts[FINISHED] == 3 and got.counts[MET] == 3
    assert got.last_defer_wall == 101.0
    # nothing new: nothing again; a process that joins later counts from its start
    c = LocalFeed([TIER], boot="c1")
    c.observe_outcome(outcome(True, 2.0))
    docs = {"a": a.document(2.0, 102.0), "b": b.document(2.0, 102.0), "c": c.document(2.0, 102.0)}
    assert merge.collect(docs, 102.0)["chat"].counts[FINISHED] == 1
    # a restart of "b" (a new incarnation) counts from zero
    b2 = LocalFeed([TIER], boot="b2")
    b2.observe_outcome(outcome(True, 3.0))
    docs["b"] = b2.document(3.0, 103.0)
    assert merge.collect(docs, 103.0)["chat"].counts[FINISHED] == 1


def test_absorbed_counts_reach_the_scaler() -> None:
    cfg = AutoscaleConfig(enabled=True)
    sc = Scaler(cfg, [TIER], start=0.0)
    f = LocalFeed([TIER], boot="x")
    merge = FeedMerge()
    merge.collect({"x": f.document(0.0, 50.0)}, 50.0)
    f.observe_outcome(outcome(True, 1.0))
    f.observe_outcome(outcome(False, 1.0))
    f.on_defer("chat", 1.5)
    absorb(sc, merge.collect({"x": f.document(2.0, 52.0)}, 52.0), 2.0, 52.0)
    st = sc.tiers["chat"]
    assert st.finished == 2 and st.deferrals == 1
    assert st.attainment.value(2.0) == 0.5
    assert st.last_defer == 1.5  # the deferral's own time, from its wall time
    assert st.lengths.support == 1.0  # the OK one is the length sample


def test_a_new_leader_resumes_the_cooldowns_and_the_rate() -> None:
    cfg = AutoscaleConfig(enabled=True)
    old = Scaler(cfg, [TIER], start=0.0)
    st = old.tiers["chat"]
    st.desired, st.last_up, st.grew_at = 4, 90.0, 80.0
    st.rate.level, st.rate.trend = 12.5, 0.1
    old._moved_at["b1"] = 95.0
    state = export_state(old, now=100.0, wall=1000.0)  # clock 100 = Unix 1000
    raw = Row(holder="w0", at=1000.0, arrivals=0.0, scale={"lead": state}).to_bytes()
    state = Row.from_bytes(raw).scale["lead"]  # as it travels
    new = Scaler(cfg, [TIER], start=0.0)
    assert resume(new, state, now=7.0, wall=1002.0)  # the new leader's clock: 7 = Unix 1002
    nt = new.tiers["chat"]
    assert nt.desired == 4
    assert math.isclose(nt.last_up, 7.0 - 12.0) and math.isclose(nt.grew_at, 7.0 - 22.0)
    assert math.isclose(new._moved_at["b1"], 7.0 - 7.0)
    assert nt.rate.level == 12.5 and nt.rate.trend == 0.1
    assert nt.asked_at is None and nt.last_defer == -math.inf
    assert not resume(new, {"v": 99}, now=7.0, wall=1002.0)


def test_rebase_counts_arrivals_from_the_take_over() -> None:
    snap = SimpleNamespace(now=10.0, backends=BackendSet([], [TIER]), loads={}, queued={"chat": 5})
    cfg = AutoscaleConfig(enabled=True)
    sc = Scaler(cfg, [TIER], start=0.0)
    rebase(sc, snap, fresh=True)  # type: ignore[arg-type]
    st = sc.tiers["chat"]
    assert st.counted == 5  # the five queued arrived before the take-over
    assert st.rate.age(10.0) == 0.0


def test_webhook_counts_carry_on_across_hand_overs() -> None:
    """The exported delivery counts continue from the previous leader's published totals
    (not from the new leader's own sender alone, not adding a returning leader's twice)."""
    snap = SimpleNamespace(now=10.0, backends=BackendSet([], [TIER]), loads={}, queued={})
    cfg = AutoscaleConfig(enabled=True)
    stats = {"a": {"delivered": 0, "failed": 0}, "b": {"delivered": 3, "failed": 0}}  # b: its own before
    procs = {}
    wall = [1000.0]
    for name in ("a", "b"):
        p = SharedScaling(name, LocalFeed([TIER], boot=name), ManualClock(10.0), wall=lambda: wall[0])
        p.hook_stats = lambda name=name: stats[name]  # type: ignore[misc]
        procs[name] = (p, Scaler(cfg, [TIER], start=0.0))

    def lead(name: str, other: str) -> SharedScaling:
        wall[0] += 1.0
        p, sc = procs[name]
        q = procs[other][0]
        row = Row(holder=other, at=1000.0, arrivals=0.0, scale={"lead": q.mine} if q.mine else None)
        p.observe({other: Row.from_bytes(row.to_bytes())}, leader=True)
        assert p.prepare(sc, snap)  # type: ignore[arg-type]
        q.observe({name: row}, leader=False)
        assert not q.prepare(procs[other][1], snap)  # type: ignore[arg-type]
        return p

    a = lead("a", "b")  # the first leader: nothing to resume
    stats["a"]["delivered"] += 5
    a.published(procs["a"][1], 10.0)
    assert a.webhook_totals() == {"delivered": 5, "failed": 0} and a.mine is not None
    assert a.mine["hooks"] == {"delivered": 5, "failed": 0}

    b = lead("b", "a")  # continues from a's 5, not from its own 3
    assert b.webhook_totals()["delivered"] == 5
    stats["b"]["delivered"] += 2
    stats["b"]["failed"] += 1
    b.published(procs["b"][1], 11.0)
    assert b.webhook_totals() == {"delivered": 7, "failed": 1}

    stats["a"]["delivered"] += 4  # a, no longer leading, empties its queue: not counted
    a = lead("a", "b")  # a leads again: from b's totals, its own earlier 5 not twice
    assert a.webhook_totals() == {"delivered": 7, "failed": 1}
    stats["a"]["delivered"] += 1
    assert a.webhook_totals() == {"delivered": 8, "failed": 1}


def test_a_new_leader_sends_again_what_the_last_one_had_not_delivered() -> None:
    """The leader's undelivered decisions travel with its state at every exchange (the
    latest exchange's list wins within one tick); the next leader inherits them."""
    snap = SimpleNamespace(now=10.0, backends=BackendSet([], [TIER]), loads={}, queued={})
    cfg = AutoscaleConfig(enabled=True)
    wall = [1000.0]
    a = SharedScaling("a", LocalFeed([TIER], boot="a"), ManualClock(10.0), wall=lambda: wall[0])
    b = SharedScaling("b", LocalFeed([TIER], boot="b"), ManualClock(10.0), wall=lambda: wall[0])
    sa, sb = Scaler(cfg, [TIER], start=0.0), Scaler(cfg, [TIER], start=0.0)
    unsent: list[dict[str, Any]] = []
    a.unsent = lambda: list(unsent)
    a.observe({}, leader=True)
    assert a.prepare(sa, snap)  # type: ignore[arg-type]
    a.published(sa, 10.0)

    def exchange() -> None:
        wall[0] += 0.05
        row = Row(holder="a", at=wall[0], arrivals=0.0, scale=a.extras()["scale"])
        b.observe({"a": Row.from_bytes(row.to_bytes())}, leader=False)

    exchange()
    assert b.lead_state is not None and "unsent" not in b.lead_state  # nothing pending: nothing sent
    release = {"tier": "chat", "decision_id": "a-7", "remove": ["s1"], "add": 0}
    unsent.append(release)  # made at the same tick: seen at the next exchange
    exchange()
    assert b.lead_state["unsent"] == [release]
    b.observe({}, leader=True)  # a is gone
    assert b.prepare(sb, snap) and b.inherited == [release]  # type: ignore[arg-type]
