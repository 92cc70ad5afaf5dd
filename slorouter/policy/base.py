"""The one policy interface.

``select(request, snapshot) -> Decision`` is synchronous and pure with respect to
shared state: it reads the :class:`~slorouter.state.snapshot.Snapshot`, returns a
value (:class:`~slorouter.values.Dispatch` with a *ranked* list of backends,
:class:`~slorouter.values.Defer` or :class:`~slorouter.values.Reject`), and may keep
only private state of its own (a round-robin cursor, a seeded RNG). The same policy
object runs in the live proxy and in the offline fleet simulator.

Lifecycle hooks (``on_dispatch``, ``on_finish``) let a policy keep its private state
in step with what happened; the tracker, not the policy, owns the shared counters.

``scope(request, snapshot) -> Scope`` tells the admission core where the policy may
serve a request (its home group of servers, the groups it may reach, how many servers
those are), so the core judges overload per group rather than over the whole fleet
(docs/policies.md §9). The default is the fleet: any request may go anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from slorouter.clock import Clock
from slorouter.state.backends import Backend
from slorouter.state.snapshot import Snapshot
from slorouter.values import Decision, Defer, Dispatch, Outcome, Reject, RequestInfo, Scope

FLEET: tuple[None] = (None,)  # the reach of a request any server may serve


class Policy(Protocol):
    kind: str

    def select(self, request: RequestInfo, snapshot: Snapshot) -> Decision: ...

    def on_dispatch(self, request: RequestInfo, backend_id: str) -> None: ...

    def on_finish(self, outcome: Outcome) -> None: ...

    def scope(self, request: RequestInfo, snapshot: Snapshot) -> Scope:
        """Where the policy may serve ``request`` (:class:`~slorouter.values.Scope`)."""
        ...

    def shared_state(self) -> Any:
        """Control-plane state other router processes must adopt (JSON types; None:
        nothing), published with this process's row (:mod:`slorouter.state.sync`)."""
        ...

    def adopt_shared(self, states: list[Any]) -> None:
        """Merge the other processes' :meth:`shared_state` values."""
        ...


class BasePolicy:
    """Convenience base: no-op hooks, and the shared 'nothing eligible' answer."""

    kind = "base"

    def on_dispatch(self, request: RequestInfo, backend_id: str) -> None:
        return None

    def on_finish(self, outcome: Outcome) -> None:
        return None

    def scope(self, request: RequestInfo, snapshot: Snapshot) -> Scope:
        """The whole fleet: any request may be served by any eligible server."""
        return Scope(None, FLEET, len(snapshot.healthy))

    def shared_state(self) -> Any:
        return None

    def adopt_shared(self, states: list[Any]) -> None:
        return None

    @staticmethod
    def no_backend(snapshot: Snapshot) -> Decision:
        if not snapshot.backends.backends:
            return Reject(503, "no backend is configured")
        return Reject(503, "no healthy backend", retry_after_s=1.0)


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a factory may use besides its params: injected time and a seed."""

    clock: Clock
    seed: int = 0
    autoscaling: bool = False


class ParamError(ValueError):
    """Bad policy params; ``errors`` are ``(path, message)`` pairs relative to params."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))
        self.errors = errors


@dataclass(slots=True)
class Params:
    """Validating reader for a policy's ``params`` mapping: collects every error."""

    raw: Mapping[str, Any]
    errors: list[tuple[str, str]] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    def number(self, name: str, default: float, *, lo: float | None = None, hi: float | None = None) -> float:
        self._seen.add(name)
        v = self.raw.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.errors.append((name, f"must be a number, got {type(v).__name__}"))
            return default
        if lo is not None and v < lo:
            self.errors.append((name, f"must be >= {lo}"))
        if hi is not None and v > hi:
            self.errors.append((name, f"must be <= {hi}"))
        return float(v)

    def integer(self, name: str, default: int, *, lo: int | None = None) -> int:
        self._seen.add(name)
        v = self.raw.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            self.errors.append((name, f"must be an integer, got {type(v).__name__}"))
            return default
        if lo is not None and v < lo:
            self.errors.append((name, f"must be >= {lo}"))
        return v

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        self._seen.add(name)
        v = self.raw.get(name, default)
        if v not in options:
            self.errors.append((name, f"must be one of {', '.join(options)}, got {v!r}"))
            return default
        return str(v)

    def boolean(self, name: str, default: bool) -> bool:
        self._seen.add(name)
        v = self.raw.get(name, default)
        if not isinstance(v, bool):
            self.errors.append((name, f"must be true or false, got {v!r}"))
            return default
        return v

    def done(self) -> None:
        """Raise :class:`ParamError` listing every error and every unknown key."""
        for k in self.raw:
            if k not in self._seen:
                self.errors.append((str(k), "unknown parameter"))
        if self.errors:
            raise ParamError(self.errors)


PolicyFactory = Callable[[Mapping[str, Any], PolicyContext], Policy]


def ranked(backends: list[Backend] | tuple[Backend, ...]) -> Dispatch:
    return Dispatch(tuple(b.id for b in backends))


__all__ = [
    "BasePolicy",
    "Decision",
    "Defer",
    "Dispatch",
    "ParamError",
    "Params",
    "Policy",
    "PolicyContext",
    "PolicyFactory",
    "Reject",
    "ranked",
]
