"""What a policy sees when it decides.

A :class:`Snapshot` is taken right before a synchronous ``select`` call and is only
valid during it. It holds references to the tracker's live counters rather than
copies (copying 1,000 backends per decision would cost more than the decision);
since ``select`` is synchronous on the one event loop, nothing can change them while
the policy reads, so within the call the snapshot is as good as frozen. Policies must
treat every field as read-only; :mod:`slorouter.state.tracker` is the only writer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slorouter.models.base import LatencyView, LengthView
from slorouter.state.backends import Backend, BackendSet

if TYPE_CHECKING:
    from slorouter.state.tracker import BackendLoad


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    backends: BackendSet
    loads: Mapping[str, BackendLoad]  # backend id -> counters (every backend in `backends` has one)
    healthy: frozenset[str]  # ids of backends that may receive new requests
    latency: LatencyView
    lengths: LengthView
    queued: Mapping[str, int]  # tier -> requests waiting in the router queue
    eligible: Callable[[str | None], tuple[Backend, ...]]  # healthy backends of a tier (None: all)
    # Tracker.watch: a set of backend ids whose running / peak_kv / prefill_tokens changed
    # since the caller last cleared it (None: no change feed; cache nothing across calls)
    watch: Callable[[object], set[str]] | None = None

    def tpot_of(self, tier: str) -> float | None:
        t = self.backends.tier_by_name.get(tier)
        return None if t is None else t.slo.tpot_s
