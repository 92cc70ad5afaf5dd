"""The live dispatcher and the fleet simulator admit alike: one trace, the same
decisions in the same order.

The simulator runs a small overloaded workload (queueing, deferrals, late requests,
wake-ups on completions and on timers) and records what the router saw (arrivals,
token updates, finishes, wake-ups) and every decision its admission core made. The
same events are then replayed into the live :class:`Dispatcher` — asyncio futures and
all, on a manual clock, no HTTP — over a fresh tracker, models and policy built the
same way; its decisions must be identical, to the request, backend and clock time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from slorouter.fleetsim.fleet import FleetSim, SimOptions
from slorouter.fleetsim.scenario import load_scenario
from slorouter.proxy.dispatcher import Dispatcher
from slorouter.values import Dispatch, Reject, RequestInfo

SCENARIOS = Path(__file__).resolve().parents[2] / "config" / "scenarios"


class _Timers:
    """The dispatcher's timer, held: in the replay the simulator's own wake-up events
    say when a timer fired (the manual clock does not move asyncio's)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, at: float, fn: Any) -> _Timers:
        self.asked.append(at)
        return self

    def cancel(self) -> None:
        return None


async def _replay(sim: FleetSim, events: list[tuple[Any, ...]]) -> tuple[list[Any], dict[int, Any]]:
    sim.core.close()  # the live dispatcher's core takes over this tracker
    log: list[Any] = []
    timers = _Timers()
    d = Dispatcher(
        sim.policy,
        sim.tracker,
        sim.clock,
        max_queue=sim.opt.max_queue,
        max_wait_s=sim.opt.max_wait_s,
        log=log,
        call_at=timers,
    )
    tracker, clock = sim.tracker, sim.clock
    answers: dict[int, Any] = {}
    tasks: list[asyncio.Task[None]] = []

    async def admit(req: RequestInfo) -> None:
        answers[req.rid] = await d.admit(req)

    async def settle() -> None:
        for _ in range(4):  # deterministic loop turns: task start, coalesced wake, future wake-up
            await asyncio.sleep(0)

    for ev in events:
        kind, t = ev[0], ev[1]
        clock.set(t)
        if kind == "arrive":
            req = ev[2]
            tracker.on_arrival(req)
            tasks.append(asyncio.get_running_loop().create_task(admit(req)))
            await settle()
        elif kind == "tokens":
            tracker.on_tokens(ev[2], ev[3])
        elif kind == "finish":
            tracker.on_finish(ev[2], ev[3])
        else:  # a wake-up: after completions (already scheduled by them) or a timer
            d.wake()
            await settle()
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return log, answers


@pytest.mark.parametrize(
    ("scenario", "policy", "rate"),
    [("polyserve-code", "polyserve", 520.0), ("polyserve-conv", "slo-pack", 420.0)],
)
def test_live_dispatcher_and_simulator_make_the_same_decisions(
    scenario: str, policy: str, rate: float
) -> None:
    scn = load_scenario(SCENARIOS / f"{scenario}.yaml")
    opt = SimOptions(decision_log=True)
    result = FleetSim(scn, policy, rate=rate, requests=1500, options=opt).run()
    sim_log, events = result.decision_log, result.events_log
    assert sim_log is not None and events is not None
    kinds = {k for _, _, k, _ in sim_log}
    # the run exercised every path: immediate dispatch, deferral, queued dispatch
    assert {"dispatch", "defer"} <= kinds, kinds
    assert sum(1 for e in events if e[0] == "wake") > 50
    assert len(sim_log) > 1500

    live_log, answers = asyncio.run(
        _replay(FleetSim(scn, policy, rate=rate, requests=1500, options=opt), events)
    )
    assert len(live_log) == len(sim_log)
    for i, (a, b) in enumerate(zip(sim_log, live_log, strict=True)):
        assert a == b, f"decision {i} differs: simulator {a}, live {b}"
    # and the live side answered every decided request with that decision
    decided = {rid: k for _, rid, k, _ in live_log if k != "defer"}
    for rid, k in decided.items():
        got = answers.get(rid)
        assert got is not None, rid
        assert isinstance(got, Dispatch if k == "dispatch" else Reject), (rid, got)
