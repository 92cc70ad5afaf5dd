"""Gain-density order of the router queue (``tempo``; slorouter/admission/gain.py):
densest work first, least slack within a density bucket, a starvation guard for a
request about to miss, and a workflow's path worth counted in its calls."""

from __future__ import annotations

import pytest

from slorouter.admission import AdmissionQueue
from slorouter.admission.core import queue_order
from slorouter.admission.gain import expected_gain
from slorouter.clock import ManualClock
from slorouter.models.workflows import WorkflowBook
from slorouter.policy import registry
from slorouter.policy.base import PolicyContext
from slorouter.values import Decision, Dispatch, RequestInfo, Slo, SloClass, Tier

CHAT = Tier("chat", Slo(SloClass.LATENCY, ttft_s=2.0, tpot_s=0.1), rank=0)
TOOL = Tier("tool", Slo(SloClass.DEADLINE, deadline_s=20.0), rank=1)
FLOW = Tier("flow", Slo(SloClass.WORKFLOW, deadline_s=60.0), rank=2)


def req(rid: int, tier: Tier, prompt: int = 100, bound: int = 100, path: int = 1) -> RequestInfo:
    return RequestInfo(rid, tier, 0.0, prompt, None, bound, path_stages=path)


def order_of(q: AdmissionQueue, now: float) -> list[int]:
    seen: list[int] = []

    def decide(r: RequestInfo) -> Decision:
        seen.append(r.rid)
        return Dispatch(("s0",))

    q.drain(decide, now)
    return seen


def filled(order: str) -> AdmissionQueue:
    """A sparse request with little slack (key 5) and a dense one with much (key 15)."""
    q = AdmissionQueue(order=order)
    q.push(req(1, CHAT), 5.0, bucket=10, home="h", servers=4)
    q.push(req(2, TOOL), 15.0, bucket=30, home="h", servers=4)
    return q


def test_slack_order_serves_least_slack_first() -> None:
    assert order_of(filled("slack"), 0.0) == [1, 2]


def test_gain_order_serves_the_densest_first() -> None:
    assert order_of(filled("gain"), 0.0) == [2, 1]


def test_within_a_bucket_the_least_slack_goes_first() -> None:
    q = AdmissionQueue(order="gain")
    q.push(req(1, TOOL), 15.0, bucket=30, home="h")
    q.push(req(2, TOOL), 9.0, bucket=30, home="h")
    q.push(req(3, TOOL), 12.0, bucket=30, home="h")
    assert order_of(q, 0.0) == [2, 3, 1]


def test_a_request_about_to_miss_goes_before_denser_work() -> None:
    """Completions every 0.5 s on a 20-server fleet, 4 servers for this lane: the next
    room here is ~2.5 s away. With 3 s of slack the sparse request can wait; with 2 s it
    would be late before the next completion — it goes first."""
    for now, first in ((2.0, 2), (3.0, 1)):
        q = filled("gain")
        for i in range(10):
            q.gap.on_completion(0.5 * i, 20)
        assert 2.4 < q.guard(("chat", "h")) < 2.6
        assert order_of(q, now)[0] == first, now


def test_switching_to_the_gain_order_keeps_queued_requests() -> None:
    q = filled("slack")
    q.set_order("gain")
    assert order_of(q, 0.0) == [2, 1]


def test_a_workflow_call_carries_the_gain_of_its_path() -> None:
    one = expected_gain(req(1, FLOW))
    assert expected_gain(req(2, FLOW, path=3)) == 3 * one
    # a decode token is worth more than a prefill token (the judge's weights)
    assert expected_gain(req(3, CHAT, prompt=10, bound=100)) > expected_gain(
        req(4, CHAT, prompt=100, bound=10)
    )


def test_the_book_counts_the_stages_left_on_the_path() -> None:
    book = WorkflowBook()
    b0 = book.call("w", "k", 0.0, 60.0, stages=4)
    assert b0.path_stages == 4
    b1 = book.call("w", "k", 1.0, 60.0, stage=2, stages=4)
    assert b1.path_stages == 2
    assert book.call("v", "k", 0.0, 60.0).path_stages == 1  # nothing learned: no basis


def test_tempo_asks_for_the_order_its_params_say() -> None:
    ctx = PolicyContext(ManualClock())
    assert queue_order(registry.build("tempo", {}, ctx)) == "slack"  # the measured better default
    assert queue_order(registry.build("tempo", {"queue_order": "gain"}, ctx)) == "gain"
    assert queue_order(registry.build("polyserve", {}, ctx)) == "slack"
    with pytest.raises(ValueError, match="queue_order"):
        registry.build("tempo", {"queue_order": "fifo"}, ctx)
