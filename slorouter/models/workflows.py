"""Workflow stage budgets: how a workflow's deadline is shared among its calls.

A workflow (calls sharing ``x-slo-workflow-id``) must end by ``T = start + D``. Giving
every call the whole remaining budget makes early calls look rich in slack and pushes the
squeeze onto the last ones; instead each call gets a deadline of its own, its *stage
budget* (``RequestInfo.target_at``), that the router schedules it for. The workflow is
still judged by ``T`` (``RequestInfo.deadline_at``).

**Stages.** The calls of a workflow are grouped into stages: a call opens a new stage when
some call of the workflow has finished since the current stage began (a chain has one
call per stage; a fan-out — root, ``width`` parallel calls, a join — three stages). A
client that knows says so: ``x-workflow-stage: k`` (1-based) and ``x-workflow-stages: n``.

**Learning, per workflow kind** (the tier, or an ``x-workflow-kind`` header). A workflow
is *learned* once it is over: its last stage (known from the header) finished, or nothing
of it has been in flight for ``idle_s``; then its number of stages ``S`` and each stage's
span (from the end of the stage before — or the workflow's start — to the stage's last
finish) join a window of the kind's last ``window`` workflows.

**Budget.** Calls of stage ``k`` that begins at ``t`` get

    target = t + (T − t) · m_k / (m_k + … + m_{Ŝ−1})

where ``m_j`` is the mean span of stage ``j`` over the learned workflows that had one (a
stage never seen takes the mean of the seen ones) and ``Ŝ`` the ``quantile`` of the
learned stage counts among workflows that got past stage ``k`` (the conditional bound, as
the output-length bound is refined as tokens arrive; ``x-workflow-stages`` when given). So
the first call gets ``start + D·share(0)``, and every later stage re-divides what is left
when it begins: the budget is refined as calls complete. The last expected stage gets all
that is left. Before ``min_samples`` workflows of a kind are learned, and without
``x-workflow-stages``, a call gets the whole remaining budget (no basis to split it);
with the header but no spans learned, the stages share it equally.

**Memory.** One entry per live workflow, dropped ``retain_s`` after its deadline — by
time, checked at most every second of the clock — and, above ``max_live``, any whose
deadline has passed. A call of a dropped workflow starts a new one (its deadline from
its own arrival, as a first call's).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from slorouter.values import Outcome, SloClass


@dataclass(frozen=True, slots=True)
class Budget:
    """What one call of a workflow is given."""

    deadline_at: float  # the workflow's deadline (start + D)
    target_at: float  # this call's stage budget (<= deadline_at)
    stage: int  # 0-based stage of the call
    stages: int | None  # the stages the budget assumed (None: unsplit, no basis)

    @property
    def path_stages(self) -> int:
        """Stages left on the workflow's longest path, this call's included (1: no basis)."""
        return max(1, self.stages - self.stage) if self.stages is not None else 1


@dataclass(slots=True)
class _Live:
    kind: str
    start: float
    due: float
    stage_start: float
    stages_hint: int | None = None  # x-workflow-stages
    stage: int = 0
    ends: list[float] = field(default_factory=list)  # ends[k]: when stage k ended (k < stage)
    in_flight: int = 0
    last_end: float | None = None  # the latest finish of a call of the workflow
    ended_since: bool = False  # a call finished since the current stage began
    learned: bool = False
    target: float = 0.0  # the current stage's target


@dataclass(slots=True)
class _Kind:
    counts: deque[int]
    spans: deque[tuple[float, ...]]


class WorkflowBook:
    """Live workflows and the learned stage budgets of each workflow kind (module docs)."""

    def __init__(
        self,
        *,
        quantile: float = 0.9,
        min_samples: int = 8,
        window: int = 500,
        idle_s: float = 5.0,
        retain_s: float = 60.0,
        max_live: int = 100_000,
    ) -> None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError("quantile must be in (0, 1]")
        if min_samples < 1 or window < 1 or max_live < 1 or idle_s < 0 or retain_s < 0:
            raise ValueError("min_samples, window, max_live >= 1; idle_s, retain_s >= 0")
        self.quantile = quantile
        self.min_samples = min_samples
        self.window = window
        self.idle_s = idle_s
        self.retain_s = retain_s
        self.max_live = max_live
        self._live: dict[str, _Live] = {}
        self._kinds: dict[str, _Kind] = {}
        self._prune_at = -math.inf

    def __len__(self) -> int:
        return len(self._live)

    # -- the calls -------------------------------------------------------------------

    def call(
        self,
        workflow_id: str,
        kind: str,
        now: float,
        deadline_s: float,
        *,
        stage: int | None = None,
        stages: int | None = None,
    ) -> Budget:
        """A call of workflow ``workflow_id`` arrives at ``now``; ``deadline_s`` is the
        workflow's budget from its first call; ``stage`` (0-based) and ``stages`` come
        from the client's headers when it sent them."""
        self._maybe_prune(now)
        e = self._live.get(workflow_id)
        if e is None:
            e = self._live[workflow_id] = _Live(kind, now, now + deadline_s, now)
            if stage:
                e.stage = stage
                e.ends = [now] * stage
            e.target = self._target(e, now)
        else:
            new = e.stage + 1 if stage is None and e.ended_since else stage
            if new is not None and new > e.stage:
                end = e.last_end if e.last_end is not None else now
                while len(e.ends) < new:
                    e.ends.append(end)
                e.stage = new
                e.stage_start = now
                e.ended_since = False
                e.target = self._target(e, now)
        if stages is not None and e.stages_hint != stages:
            e.stages_hint = stages
            e.target = self._target(e, e.stage_start)
        e.in_flight += 1
        return Budget(e.due, e.target, e.stage, self._expected(e))

    def done(self, workflow_id: str, now: float) -> None:
        """A call of the workflow finished (in any way) at ``now``."""
        e = self._live.get(workflow_id)
        if e is None:
            return
        e.in_flight = max(0, e.in_flight - 1)
        e.last_end = now if e.last_end is None else max(e.last_end, now)
        e.ended_since = True
        if e.in_flight == 0 and e.stages_hint is not None and e.stage + 1 >= e.stages_hint:
            self._learn(e)
        self._maybe_prune(now)

    def observe_outcome(self, o: Outcome) -> None:
        """Tracker listener: a finished call of a workflow-class request."""
        req = o.request
        if req is not None and req.workflow_id is not None and req.tier.slo.slo_class is SloClass.WORKFLOW:
            self.done(req.workflow_id, o.finished_at)

    # -- learning --------------------------------------------------------------------

    def _learn(self, e: _Live) -> None:
        if e.learned or e.last_end is None:
            return
        e.learned = True
        bounds = [e.start, *e.ends, e.last_end]
        spans = tuple(max(0.0, bounds[k + 1] - bounds[k]) for k in range(len(bounds) - 1))
        k = self._kinds.get(e.kind)
        if k is None:
            k = self._kinds[e.kind] = _Kind(deque(maxlen=self.window), deque(maxlen=self.window))
        k.counts.append(e.stage + 1)
        k.spans.append(spans)

    def learned(self, kind: str) -> int:
        """Workflows of ``kind`` learned so far (in the window)."""
        k = self._kinds.get(kind)
        return 0 if k is None else len(k.counts)

    def stages(self, kind: str, reached: int = 0) -> int | None:
        """The ``quantile`` of the learned stage counts of ``kind`` among workflows with
        more than ``reached`` stages (None: fewer than ``min_samples`` learned)."""
        k = self._kinds.get(kind)
        if k is None or len(k.counts) < self.min_samples:
            return None
        more = sorted(c for c in k.counts if c > reached)
        if not more:
            return reached + 1
        return more[min(len(more) - 1, math.ceil(self.quantile * len(more)) - 1)]

    def shares(self, kind: str, stages: int) -> list[float]:
        """Mean span of each of ``stages`` stages (seconds; 1.0 each without data)."""
        k = self._kinds.get(kind)
        sums = [0.0] * stages
        ns = [0] * stages
        if k is not None:
            for sp in k.spans:
                for j, s in enumerate(sp[:stages]):
                    sums[j] += s
                    ns[j] += 1
        seen = [sums[j] / ns[j] for j in range(stages) if ns[j]]
        fill = sum(seen) / len(seen) if seen else 1.0
        out = [sums[j] / ns[j] if ns[j] else fill for j in range(stages)]
        if not any(x > 0 for x in out):
            return [1.0] * stages
        return [max(x, 1e-6) for x in out]

    def _expected(self, e: _Live) -> int | None:
        if e.stages_hint is not None:
            return max(e.stages_hint, e.stage + 1)
        s = self.stages(e.kind, e.stage)
        return None if s is None else max(s, e.stage + 1)

    def _target(self, e: _Live, t: float) -> float:
        s = self._expected(e)
        if s is None or s <= e.stage + 1 or t >= e.due:
            return e.due
        m = self.shares(e.kind, s)
        k = e.stage
        return t + (e.due - t) * m[k] / sum(m[k:])

    # -- memory ----------------------------------------------------------------------

    def _maybe_prune(self, now: float) -> None:
        if now >= self._prune_at or len(self._live) > self.max_live:
            self.prune(now)

    def prune(self, now: float) -> None:
        """Learn the workflows idle for ``idle_s``; drop those ``retain_s`` past their
        deadline (and, above ``max_live``, any past its deadline)."""
        self._prune_at = now + 1.0
        live = self._live
        for e in live.values():
            if (
                not e.learned
                and e.in_flight == 0
                and e.last_end is not None
                and now - e.last_end >= self.idle_s
            ):
                self._learn(e)
        drop = [w for w, e in live.items() if e.due + self.retain_s < now]
        if len(live) - len(drop) > self.max_live:
            drop = [w for w, e in live.items() if e.due < now]
        for w in drop:
            e = live.pop(w)
            self._learn(e)
