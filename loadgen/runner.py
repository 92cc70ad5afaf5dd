"""Runs a workload against a target and returns the raw records.

Open loop: units are sent at their scheduled offsets no matter how the server is
doing (requests are never held back by earlier ones). The schedule lag of each send
(actual send time minus scheduled time) is recorded; a generator that cannot keep up
shows it there instead of silently measuring itself.

Closed loop (``process: concurrency``): N virtual users, each sending its next unit
when its previous one finished.

Workflows: call ``i`` is sent when all of ``deps[i]`` have finished successfully; if
one failed, the calls waiting on it are never sent (status ``cancelled``).

The run stops scheduling at the duration (or request count), waits up to
``drain_s`` for what is in flight, then cancels the rest (status ``cancelled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp

from loadgen.client import Client, first_model, make_session
from loadgen.planner import Planner
from loadgen.records import CallRecord, Unit
from loadgen.workload import Workload

ProgressFn = Callable[["RunState"], None]


@dataclass(slots=True)
class RunState:
    """Live counters, read by the progress display."""

    started: float = 0.0
    sent: int = 0
    finished: int = 0
    units_total: int | None = None
    horizon_s: float | None = None
    scheduling_done: bool = False
    max_lag: float = 0.0


@dataclass(slots=True)
class RunResult:
    workload: Workload
    target: str
    model: str
    units: list[Unit]
    duration: float  # from the start to the last response
    wall_start: float  # time.time() at the start
    cpu_s: float  # CPU seconds used by this process during the run
    lags: list[float] = field(default_factory=list)  # per open-loop send, seconds
    max_concurrency: int | None = None
    t0: float = 0.0  # time.perf_counter() at the start: record times are relative to it

    @property
    def records(self) -> list[CallRecord]:
        return [c for u in self.units for c in u.calls]


def raise_fd_limit() -> None:
    """Many open streams need many sockets: lift the soft limit to the hard one."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_workload(
    workload: Workload,
    target: str,
    *,
    api_key: str | None = None,
    state: RunState | None = None,
    session: aiohttp.ClientSession | None = None,
) -> RunResult:
    raise_fd_limit()
    st = state or RunState()
    api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    own = session is None
    sess = session or make_session()
    try:
        model = workload.model
        if model == "auto":
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            if workload.tier_by == "api_key" and workload.api_keys:
                headers = {"Authorization": f"Bearer {next(iter(workload.api_keys.values()))}"}
            model = await first_model(sess, target, headers)
        return await _run(workload, target, model, api_key, st, sess)
    finally:
        if own:
            await sess.close()


async def _run(
    w: Workload, target: str, model: str, api_key: str | None, st: RunState, sess: aiohttp.ClientSession
) -> RunResult:
    planner = Planner(w)
    client = Client(sess, target, w, model, 0.0, api_key, run_id=uuid.uuid4().hex[:8])
    with _quiet_gc():
        return await _schedule(w, target, model, client, planner, st)


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    """Fewer, later garbage collections during the run: a full collection over many live
    records can stall the loop for tens of ms, which would show up as schedule lag."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


async def _schedule(
    w: Workload, target: str, model: str, client: Client, planner: Planner, st: RunState
) -> RunResult:
    units: list[Unit] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    cpu0 = time.process_time()
    wall = time.time()
    t0 = client.t0 = time.perf_counter()
    st.started = t0
    st.horizon_s = w.duration_s
    st.units_total = w.requests

    def spawn(unit: Unit) -> asyncio.Task[None]:
        task = asyncio.ensure_future(_run_unit(client, unit, st))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    if w.arrival.closed_loop:
        n_users = w.arrival.concurrency or 1
        users = [asyncio.ensure_future(_user(client, planner, units, st, t0)) for _ in range(n_users)]
        limit = None if w.duration_s is None else w.duration_s + w.drain_s
        _done, late = await asyncio.wait(users, timeout=limit)
        st.scheduling_done = True
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
    else:
        clock = time.perf_counter
        for unit in planner.open_loop():
            delay = t0 + unit.sched - clock()
            # always yield once, so a generator that is behind still lets its streams run
            await asyncio.sleep(delay if delay > 0 else 0)
            units.append(unit)
            spawn(unit)
            # the send time is taken when the unit's task first runs, so loop congestion
            # shows up in the schedule lag (send time - scheduled time)
    st.scheduling_done = True
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=w.drain_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if not w.arrival.closed_loop:
        for u in units:
            first = u.calls[0]
            if first.sent is not None:
                lags.append(max(0.0, first.sent - first.sched))
    ends = [c.done for u in units for c in u.calls if c.done is not None]
    duration = max(ends) if ends else time.perf_counter() - t0
    return RunResult(
        workload=w,
        target=target,
        model=model,
        units=units,
        duration=duration,
        wall_start=wall,
        cpu_s=time.process_time() - cpu0,
        lags=lags,
        max_concurrency=w.arrival.concurrency,
        t0=t0,
    )


async def _user(client: Client, planner: Planner, units: list[Unit], st: RunState, t0: float) -> None:
    w = planner.w
    clock = time.perf_counter
    while True:
        now = clock() - t0
        if w.requests is not None and len(units) >= w.requests:
            return
        if w.duration_s is not None and now >= w.duration_s:
            return
        unit = planner.make_unit(now)
        units.append(unit)
        await _run_unit(client, unit, st)


async def _run_unit(client: Client, unit: Unit, st: RunState) -> None:
    calls = unit.calls
    if len(calls) == 1:
        await _send(client, calls[0], st)
        return
    done = [asyncio.Event() for _ in calls]

    async def one(i: int) -> None:
        try:
            for d in unit.deps[i]:
                await done[d].wait()
            if not all(calls[d].ok for d in unit.deps[i]):
                calls[i].status = "cancelled"
                calls[i].error = "a workflow predecessor failed; never sent"
                return
            if unit.deps[i]:
                calls[i].sched = max(calls[d].done or 0.0 for d in unit.deps[i])
            await _send(client, calls[i], st, unit.start)
        finally:
            if calls[i].status == "pending":
                calls[i].status = "cancelled"
                calls[i].error = "the run ended before this call was sent"
            done[i].set()

    await asyncio.gather(*(one(i) for i in range(len(calls))))


async def _send(client: Client, rec: CallRecord, st: RunState, unit_start: float | None = None) -> None:
    st.sent += 1
    try:
        await client.send(rec, unit_start)
    finally:
        st.finished += 1
        if rec.sent is not None and rec.call == 0:
            st.max_lag = max(st.max_lag, rec.sent - rec.sched)
