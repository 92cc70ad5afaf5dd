"""The scaler's inputs across router processes (pure: no I/O; times are passed in).

With several router processes (``--workers N``, ``state.sync`` replicas) one process —
the leader — runs the :class:`~slorouter.autoscale.scaler.Scaler`, but every process
finishes requests and defers on-time ones. What the scaler takes from those events is
kept per process as **cumulative counters per tier** (:class:`LocalFeed`: a few
additions per finished request, one per deferral; nothing per token) and published in
the process's row; the leader turns every process's counters into increments since it
last looked (:class:`FeedMerge`, per process and incarnation, like a Prometheus
``increase``) and hands them to its scaler (:func:`absorb`). What the scaler reads from
the snapshot (residents per tier on every server, the queues) is already the shared view.

A counter vector, per tier: finished, met, finished OK with output (the length sample),
Σprompt, Σoutput, Σ n·(p + n/2) of those, deferrals; plus the wall time of the last
deferral.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slorouter.autoscale.scaler import Scaler, met_slo
from slorouter.values import Outcome, Status, Tier

FINISHED, MET, SAMPLED, PROMPT, OUTPUT, CONTEXT, DEFERRALS = range(7)
WIDTH = 7


class LocalFeed:
    """This process's cumulative counters per tier (a tracker listener and the
    deferral sink of :class:`~slorouter.actuation.scaling.DeferWatch`)."""

    def __init__(self, tiers: Sequence[Tier], boot: str) -> None:
        self.boot = boot  # this incarnation: a restarted process starts its counters again
        self.tiers = {t.name: t for t in tiers}
        self.counts: dict[str, list[float]] = {t.name: [0.0] * WIDTH for t in tiers}
        self.last_defer: dict[str, float] = {}  # the clock's time

    def observe_outcome(self, o: Outcome) -> None:
        c = self.counts.get(o.tier)
        if c is None:
            return
        c[FINISHED] += 1
        if met_slo(self.tiers[o.tier], o):
            c[MET] += 1
        if o.status is Status.OK and o.output_tokens >= 1 and o.prompt_tokens >= 0:
            c[SAMPLED] += 1
            c[PROMPT] += o.prompt_tokens
            c[OUTPUT] += o.output_tokens
            c[CONTEXT] += o.output_tokens * (o.prompt_tokens + o.output_tokens / 2.0)

    def on_defer(self, tier: str, now: float) -> None:
        c = self.counts.get(tier)
        if c is not None:
            c[DEFERRALS] += 1
            self.last_defer[tier] = max(self.last_defer.get(tier, -math.inf), now)

    def document(self, now: float, wall: float) -> dict[str, Any]:
        """The published form (JSON types); ``now`` on the clock, ``wall`` Unix time."""
        tiers: dict[str, list[float | None]] = {}
        for name, c in self.counts.items():
            d = self.last_defer.get(name)
            tiers[name] = [*c, None if d is None else wall - (now - d)]
        return {"boot": self.boot, "t": tiers}


@dataclass(slots=True)
class TierDelta:
    counts: list[float]
    last_defer_wall: float | None = None


class FeedMerge:
    """The leader's side: every process's increments since the last :meth:`collect`.

    A process seen for the first time counts from then when the merge is fresh (a new
    leader: what happened before it took over is in the state it resumed from), else from
    its start (a process that joined later: all of its counts are new). A process whose
    counters went back (a restart under the same name and incarnation id: never expected)
    counts from zero again."""

    def __init__(self, forget_after_s: float = 600.0) -> None:
        self.forget_after_s = forget_after_s
        self._last: dict[tuple[str, str, str], list[float]] = {}
        self._seen: dict[tuple[str, str, str], float] = {}
        self.primed = False

    def reset(self) -> None:
        """Start afresh (this process just became the leader)."""
        self._last.clear()
        self._seen.clear()
        self.primed = False

    def collect(self, docs: Mapping[str, Any], wall: float) -> dict[str, TierDelta]:
        """``docs``: holder -> its published feed document (malformed ones are skipped)."""
        out: dict[str, TierDelta] = {}
        for holder, doc in docs.items():
            if not isinstance(doc, dict) or not isinstance(doc.get("t"), dict):
                continue
            boot = str(doc.get("boot", ""))
            for tier, vec in doc["t"].items():
                cur = _vector(vec)
                if cur is None:
                    continue
                key = (holder, boot, str(tier))
                prev = self._last.get(key)
                self._last[key] = cur
                self._seen[key] = wall
                if prev is None:
                    if not self.primed:
                        continue
                    prev = [0.0] * WIDTH
                if any(c < p for c, p in zip(cur, prev, strict=True)):
                    prev = [0.0] * WIDTH
                inc = [c - p for c, p in zip(cur, prev, strict=True)]
                if not any(inc):
                    continue
                d = out.setdefault(str(tier), TierDelta([0.0] * WIDTH))
                d.counts = [a + b for a, b in zip(d.counts, inc, strict=True)]
                at = vec[WIDTH] if len(vec) > WIDTH else None
                if inc[DEFERRALS] > 0 and isinstance(at, int | float):
                    d.last_defer_wall = max(d.last_defer_wall or -math.inf, float(at))
        self.primed = True
        for key in [k for k, t in self._seen.items() if wall - t > self.forget_after_s]:
            del self._seen[key], self._last[key]
        return out


def _vector(vec: Any) -> list[float] | None:
    if not isinstance(vec, list) or len(vec) < WIDTH:
        return None
    head = vec[:WIDTH]
    if not all(isinstance(x, int | float) and x >= 0 for x in head):
        return None
    return [float(x) for x in head]


def absorb(scaler: Scaler, deltas: Mapping[str, TierDelta], now: float, wall: float) -> None:
    """Hand the fleet's increments to the scaler as if it had observed them ``now``."""
    for name, d in deltas.items():
        st = scaler.tiers.get(name)
        if st is None:
            continue
        c = d.counts
        st.finished += round(c[FINISHED])
        st.attainment.observe_many(c[MET], c[FINISHED], now)
        st.lengths.observe_sums(c[SAMPLED], c[PROMPT], c[OUTPUT], c[CONTEXT], now)
        if c[DEFERRALS] > 0:
            st.deferrals += round(c[DEFERRALS])
            at = now if d.last_defer_wall is None else min(now, now - (wall - d.last_defer_wall))
            st.last_defer = max(st.last_defer, at)
