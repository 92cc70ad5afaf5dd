"""Turns a workload into units of work (requests and workflows) with their lengths.

Separate seeded random streams are used for arrival times, the tier mix and the
lengths, so that the same seed gives the same sequence of request shapes at every
rate (a sweep changes only *when* requests arrive, not *what* they are).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator

from loadgen import arrivals
from loadgen.records import CallRecord, Unit
from loadgen.workload import MixEntry, Workload


class Planner:
    def __init__(self, workload: Workload) -> None:
        self.w = workload
        seed = workload.seed
        self._arrival_rng = random.Random(seed * 7919 + 1)
        self._mix_rng = random.Random(seed * 7919 + 2)
        self._len_rng = random.Random(seed * 7919 + 3)
        self._cum = list(itertools.accumulate(e.share for e in workload.mix))
        self._uid = 0
        self._rid = 0

    def _entry(self) -> MixEntry:
        x = self._mix_rng.random() * self._cum[-1]
        return self.w.mix[min(bisect.bisect_right(self._cum, x), len(self.w.mix) - 1)]

    def make_unit(self, sched: float, row: int | None = None) -> Unit:
        """The next unit, due at ``sched``; ``row`` is the replayed trace row, if any."""
        entry = self._entry()
        trace = self.w.arrival.trace
        row_prompt = trace.prompts[row] if trace is not None and row is not None else None
        row_output = trace.outputs[row] if trace is not None and row is not None else None
        deps = entry.workflow.deps() if entry.workflow is not None else ((),)
        uid = self._uid
        self._uid += 1
        wf_id = f"wf-{self.w.seed}-{uid}" if entry.workflow is not None else None
        calls = []
        for i in range(len(deps)):
            calls.append(
                CallRecord(
                    rid=self._rid,
                    unit=uid,
                    call=i,
                    tier=entry.tier.name,
                    stream=entry.stream,
                    prompt_tokens=entry.prompt.sample(self._len_rng, row_prompt),
                    max_tokens=entry.output.sample(self._len_rng, row_output),
                    sched=sched,
                    workflow_id=wf_id,
                )
            )
            self._rid += 1
        return Unit(uid, entry.tier.name, sched, calls, deps)

    def open_loop(self) -> Iterator[Unit]:
        """Units in arrival order until the workload's duration or request count is reached."""
        limit = self.w.requests
        horizon = self.w.duration_s
        if limit is None and horizon is None:
            trace = self.w.arrival.trace
            if trace is None:
                raise ValueError("give a duration or a request count")
            limit = len(trace)  # one pass over the replayed window
        for n, (t, row) in enumerate(arrivals.offsets(self.w.arrival, self._arrival_rng)):
            if limit is not None and n >= limit:
                return
            if horizon is not None and t >= horizon:
                return
            yield self.make_unit(t, row)
