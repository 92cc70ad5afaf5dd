"""A workflow's service gain, one call at a time.

A workflow counts only if its last call is in time (:func:`slojudge.gain.judge`), but a
router sees the calls one by one and never knows which is the last. Every call of a
workflow shares the workflow's absolute deadline, so the workflow is in time exactly
when every call finished ``ok`` by it. The ledger therefore

* **credits** each call that met the deadline when it finishes, and
* when a call misses (late, failed, rejected), **forfeits** what the workflow's earlier
  calls were credited and credits nothing more for that workflow.

``credited − forfeited``, summed over calls, equals the sum of :func:`judge` over the
workflows once all their calls finished — to the token. Both totals only grow, so each
can be a monotone counter (Prometheus).

Memory: one entry per workflow, dropped ``retain_s`` after its deadline (and, above
``max_workflows``, any whose deadline has passed). A call of a dropped workflow can only
be late; it forfeits nothing, so the earlier calls' credit then stays.
"""

from __future__ import annotations

from dataclasses import dataclass

from slojudge.gain import Verdict


@dataclass(slots=True)
class _Entry:
    due_at: float
    credited: float = 0.0
    missed: bool = False


class WorkflowLedger:
    def __init__(self, retain_s: float = 3600.0, max_workflows: int = 100_000) -> None:
        if retain_s < 0 or max_workflows < 1:
            raise ValueError("retain_s must be >= 0 and max_workflows >= 1")
        self.retain_s = retain_s
        self.max_workflows = max_workflows
        self._live: dict[str, _Entry] = {}
        self._prune_at = -float("inf")
        self._prune_size = max_workflows  # size that triggers a prune (doubles if nothing can go)

    def __len__(self) -> int:
        return len(self._live)

    def call(self, workflow_id: str, due_at: float, verdict: Verdict, now: float) -> tuple[float, float]:
        """Record one finished call (``verdict`` from ``judge("workflow", w, [call], due_at)``).
        Returns ``(credited, forfeited)`` for this call."""
        if now >= self._prune_at or len(self._live) >= self._prune_size:
            self._prune(now)
        e = self._live.get(workflow_id)
        if e is None:
            e = self._live[workflow_id] = _Entry(due_at)
        if e.missed:
            return 0.0, 0.0
        if verdict.met:
            e.credited += verdict.gain
            return verdict.gain, 0.0
        e.missed = True
        lost, e.credited = e.credited, 0.0
        return 0.0, lost

    def _prune(self, now: float) -> None:
        self._prune_at = now + max(self.retain_s / 8.0, 1.0)
        live = self._live
        for k in [k for k, e in live.items() if e.due_at + self.retain_s < now]:
            del live[k]
        if len(live) >= self.max_workflows:
            for k in [k for k, e in live.items() if e.due_at < now]:
                del live[k]
        self._prune_size = max(self.max_workflows, 2 * len(live))
