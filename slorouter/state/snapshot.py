"""What a policy sees when it decides.

A :class:`Snapshot` is taken right before a synchronous ``select`` call and is only
valid during it. Its loads are :class:`~slorouter.state.load.BackendLoad` aggregates
(counters and small tuples of numbers — never per-request objects), held by reference
rather than copied (copying 1,000 backends per decision would cost more than the
decision); since ``select`` is synchronous on the one event loop, nothing can change
them while the policy reads, so within the call the snapshot is as good as frozen.
Policies must treat every field as read-only; :mod:`slorouter.state.tracker` is the
only writer.

**Eligibility is part of the snapshot.** A snapshot taken for a request
(``tracker.snapshot(request)``) shows as ``healthy`` and ``eligible`` only the backends
that may serve it (its model, its API's engines): a policy never ranks a backend that
would have to be filtered out afterwards. ``fleet`` is a generation key of what the
policy may cache per fleet: it changes whenever the backend set, health or the
request's pool of eligible backends changes (never reused, unlike ``id()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from slorouter.models.base import LatencyView, LengthView
from slorouter.state.backends import Backend, BackendSet
from slorouter.state.load import BackendLoad


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    backends: BackendSet
    loads: Mapping[str, BackendLoad]  # backend id -> counters (every backend in `backends` has one)
    healthy: frozenset[str]  # ids of backends that may receive this request (healthy, eligible)
    latency: LatencyView
    lengths: LengthView
    queued: Mapping[str, int]  # tier -> requests waiting in the router queue
    eligible: Callable[[str | None], tuple[Backend, ...]]  # `healthy` backends of a tier (None: all)
    # Tracker.watch: a set of backend ids whose running / peak_kv / prefill_tokens changed
    # since the caller last cleared it (None: no change feed; cache nothing across calls)
    watch: Callable[[object], set[str]] | None = None
    # (backend-set generation, health version, pool): equal keys = same `backends`/`healthy`
    fleet: tuple[int, int, int] = (0, 0, 0)

    def tpot_of(self, tier: str) -> float | None:
        t = self.backends.tier_by_name.get(tier)
        return None if t is None else t.slo.tpot_s


class QueuedSum(Mapping[str, int]):
    """Two count mappings read as their sum (queued requests here and elsewhere)."""

    __slots__ = ("a", "b")

    def __init__(self, a: Mapping[str, int], b: Mapping[str, int]) -> None:
        self.a, self.b = a, b

    def __getitem__(self, k: str) -> int:
        if k not in self.a and k not in self.b:
            raise KeyError(k)
        return self.a.get(k, 0) + self.b.get(k, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(set(self.a) | set(self.b))

    def __len__(self) -> int:
        return len(set(self.a) | set(self.b))
