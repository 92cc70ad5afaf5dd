"""Which backends the router routes to: the config file's, plus those registered through
the admin API, minus those removed; the scaler's tier moves on top. Mutable bookkeeping
that produces immutable :class:`~slorouter.state.backends.BackendSet` values — the set a
decision sees is never changed, a new one is built and swapped (``build()``).

A backend **removed** (by the admin API or the scaler) first drains: it stays in the set,
not routable, until its in-flight requests finished; then it leaves the set and is listed
as removable (the caller may stop the server). A removed configured backend stays out on
a config reload (register it again to bring it back); a registered one whose id the file
now also declares is replaced by the file's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from slorouter.state.backends import Backend, BackendSet
from slorouter.values import Tier


@dataclass(frozen=True, slots=True)
class Removed:
    backend: Backend
    at: float  # the clock's time when it left the set
    by: str  # who asked: "admin" or "scaler"


class Membership:
    __slots__ = ("_gone", "configured", "registered", "removed", "removing", "tier_of", "tiers")

    def __init__(self, configured: Iterable[Backend], tiers: Sequence[Tier], keep_removed: int = 256) -> None:
        self.configured: dict[str, Backend] = {b.id: b for b in configured}
        self.tiers: tuple[Tier, ...] = tuple(tiers)
        self.registered: dict[str, Backend] = {}
        self.tier_of: dict[str, str] = {}  # id -> tier bin the scaler moved it to
        self.removing: dict[str, str] = {}  # id -> who asked (draining, still in the set)
        self._gone: set[str] = set()  # configured ids removed (kept out across reloads)
        self.removed: deque[Removed] = deque(maxlen=keep_removed)

    # -- reads ---------------------------------------------------------------------------

    def current(self) -> list[Backend]:
        """The backends of the set, configured first (in file order), then registered."""
        out = [b for i, b in self.configured.items() if i not in self._gone]
        out += [b for i, b in self.registered.items() if i not in self.configured]
        return [replace(b, tier=self.tier_of[b.id]) if b.id in self.tier_of else b for b in out]

    def build(self) -> BackendSet:
        return BackendSet(self.current(), self.tiers)

    def get(self, backend_id: str) -> Backend | None:
        return next((b for b in self.current() if b.id == backend_id), None)

    # -- changes -------------------------------------------------------------------------

    def set_config(self, configured: Iterable[Backend], tiers: Sequence[Tier]) -> list[str]:
        """A reloaded config's backends and tiers; returns warnings for the operator."""
        new = {b.id: b for b in configured}
        warnings: list[str] = []
        for bid in [b for b in self.registered if b in new]:
            warnings.append(f"backend {bid}: registered through the admin API, now declared in the file")
            del self.registered[bid]
        for bid in sorted(self._gone & set(new)):
            warnings.append(f"backend {bid}: in the file but removed at run time; register it to use it")
        for bid, tier in list(self.tier_of.items()):
            old = self.configured.get(bid)
            if bid in new and (old is None or old.tier != new[bid].tier):
                del self.tier_of[bid]  # the operator set its tier in the file: that wins
            elif bid in new and new[bid].tier != tier:
                warnings.append(
                    f"backend {bid}: serves tier {tier} (moved by the scaler), not {new[bid].tier}"
                )
        names = {t.name for t in tiers}
        for bid in [b for b, t in self.tier_of.items() if t not in names]:
            del self.tier_of[bid]
        self.configured = new
        self.tiers = tuple(tiers)
        return warnings

    def register(self, b: Backend) -> str:
        """Add ``b``: ``"created"``, ``"unchanged"`` (same id, URL, engine and tier), or
        raises :class:`ValueError` when its id or URL is taken by another backend."""
        if b.tier not in {t.name for t in self.tiers}:
            raise ValueError(f"unknown tier {b.tier!r} (tiers: {', '.join(t.name for t in self.tiers)})")
        mine = self.get(b.id)
        if mine is not None:
            if b.id in self.removing:
                raise ValueError(f"backend {b.id!r} is being removed; register it again once it is gone")
            if (mine.url, mine.engine, mine.tier, mine.models) == (b.url, b.engine, b.tier, b.models):
                return "unchanged"
            raise ValueError(f"backend id {b.id!r} is taken (url {mine.url}, tier {mine.tier})")
        same = next((x for x in self.current() if x.url == b.url), None)
        if same is not None:
            raise ValueError(f"{b.url} is already backend {same.id!r}")
        self._gone.discard(b.id)
        self.tier_of.pop(b.id, None)
        if b.id in self.configured:
            self.configured[b.id] = b
        else:
            self.registered[b.id] = b
        return "created"

    def move(self, assignment: Mapping[str, str]) -> None:
        for bid, tier in assignment.items():
            if self.get(bid) is not None:
                self.tier_of[bid] = tier

    def begin_remove(self, backend_id: str, by: str) -> bool:
        """Start draining ``backend_id`` for removal (False: no such backend)."""
        if self.get(backend_id) is None:
            return False
        self.removing.setdefault(backend_id, by)
        return True

    def finish_remove(self, backend_id: str, now: float) -> Removed | None:
        """Take a drained backend out of the set."""
        b = self.get(backend_id)
        by = self.removing.pop(backend_id, None)
        if b is None or by is None:
            return None
        self.registered.pop(backend_id, None)
        if backend_id in self.configured:
            self._gone.add(backend_id)
        self.tier_of.pop(backend_id, None)
        r = Removed(b, now, by)
        self.removed.append(r)
        return r

    def adopt(
        self, backend_id: str, state: str, backend: Backend | None, tier: str | None, by: str, now: float
    ) -> Removed | None:
        """Agree with another router process's word on a backend (``state``: ``active``,
        ``removing`` or ``removed``; ``backend``: its description while it is in the set;
        ``tier``: the bin the scaler moved it to). Returns the removal record when it
        leaves the set here."""
        if state == "removed":
            if self.get(backend_id) is None:
                return None
            self.removing.setdefault(backend_id, by)
            return self.finish_remove(backend_id, now)
        if backend is not None:
            if backend_id in self.configured:
                self.configured[backend_id] = backend
            else:
                self.registered[backend_id] = backend
            self._gone.discard(backend_id)
        if self.get(backend_id) is None:
            return None
        if tier is not None and tier in {t.name for t in self.tiers}:
            self.tier_of[backend_id] = tier
        else:
            self.tier_of.pop(backend_id, None)
        if state == "removing":
            self.removing.setdefault(backend_id, by)
        else:
            self.removing.pop(backend_id, None)
        return None
