"""The backend set: an immutable description of the fleet, rebuilt and swapped.

Health is not part of it (it changes far more often); see :class:`Health`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from slorouter.values import Engine, Tier


@dataclass(frozen=True, slots=True)
class Backend:
    id: str  # unique name (config `backends[i].name`, default "b<i>")
    url: str  # base URL, e.g. http://127.0.0.1:8000 (no trailing slash)
    engine: Engine = Engine.VLLM
    tier: str = ""  # the tier bin this server currently belongs to
    models: tuple[str, ...] = ()  # served model names (empty: any model)
    # the key the engine requires (vLLM --api-key), sent as `Authorization: Bearer` on
    # every request the router makes to it; from `backends[i].api_key_env`
    api_key: str | None = field(default=None, repr=False)


class BackendSet:
    """Backends plus the tiers, ordered. Never mutated: derive a new one instead."""

    __slots__ = ("_by_id", "_by_tier", "backends", "tier_by_name", "tiers")

    def __init__(self, backends: Iterable[Backend], tiers: Sequence[Tier]) -> None:
        self.backends: tuple[Backend, ...] = tuple(backends)
        self.tiers: tuple[Tier, ...] = tuple(sorted(tiers, key=lambda t: t.rank))
        self.tier_by_name: Mapping[str, Tier] = MappingProxyType({t.name: t for t in self.tiers})
        by_id = {b.id: b for b in self.backends}
        if len(by_id) != len(self.backends):
            raise ValueError("backend ids must be unique")
        self._by_id: Mapping[str, Backend] = MappingProxyType(by_id)
        by_tier: dict[str, list[Backend]] = {t.name: [] for t in self.tiers}
        for b in self.backends:
            by_tier.setdefault(b.tier, []).append(b)
        self._by_tier: Mapping[str, tuple[Backend, ...]] = MappingProxyType(
            {k: tuple(v) for k, v in by_tier.items()}
        )

    def __len__(self) -> int:
        return len(self.backends)

    def __contains__(self, backend_id: object) -> bool:
        return backend_id in self._by_id

    def get(self, backend_id: str) -> Backend | None:
        return self._by_id.get(backend_id)

    def __getitem__(self, backend_id: str) -> Backend:
        return self._by_id[backend_id]

    def in_tier(self, tier: str) -> tuple[Backend, ...]:
        return self._by_tier.get(tier, ())

    def with_tiers(self, assignment: Mapping[str, str]) -> BackendSet:
        """A new set where ``assignment[backend_id]`` gives a backend's new tier bin."""
        return BackendSet((replace(b, tier=assignment.get(b.id, b.tier)) for b in self.backends), self.tiers)


class Health:
    """Which backends may receive new requests. Written by health checks (layer 4)
    through :meth:`set`; read through :attr:`healthy` (a frozenset, swapped on change)."""

    __slots__ = ("_version", "healthy")

    def __init__(self, backend_ids: Iterable[str] = ()) -> None:
        self.healthy: frozenset[str] = frozenset(backend_ids)
        self._version = 0

    @property
    def version(self) -> int:
        return self._version

    def set(self, backend_id: str, ok: bool) -> bool:
        """Mark a backend up or down; returns True when that changed anything."""
        if ok == (backend_id in self.healthy):
            return False
        self.healthy = self.healthy | {backend_id} if ok else self.healthy - {backend_id}
        self._version += 1
        return True

    def reset(self, backend_ids: Iterable[str]) -> None:
        self.healthy = frozenset(backend_ids)
        self._version += 1
