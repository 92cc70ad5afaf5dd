"""Autoscaling in the fleet simulator: the fleet changes while the run goes on.

A scaler — the router's own per-tier :class:`~slorouter.autoscale.scaler.Scaler`, or one of
the pool baselines of :mod:`slorouter.autoscale.baselines` — is ticked every
``interval_s`` on the simulator's clock with the first router's snapshot, and its
:class:`~slorouter.autoscale.decision.TickResult` is acted on as an actuator that reconciles
levels would (docs/autoscaling.md, "Webhooks"):

* **moves** — the servers' tiers change (``BackendSet.with_tiers``);
* **releases** — the servers are drained (no new requests) and leave the set once their
  last request finished (the per-tier scaler releases only empty ones: at once);
* **decisions** — per tier, ``desired − current`` servers are kept *asked for*: missing
  ones are asked for now and join the tier ``provisioning_delay_s`` later (a new engine,
  empty, its own seed); asks beyond it are cancelled, the newest first.

**Cost**: every server is charged from the moment it is asked for (the starting fleet:
from the first arrival) until it leaves the set or its ask is cancelled, clipped to the
arrivals' span — the same window for every scaler, and the one the oracle
(:func:`oracle_server_seconds`) is integrated over.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slorouter.autoscale.baselines import BASELINES, EngineGauges, PoolLimits, PoolScaler
from slorouter.autoscale.decision import TickResult
from slorouter.autoscale.scaler import Scaler
from slorouter.config.autoscale import AutoscaleConfig
from slorouter.fleetsim.envelope import Envelope
from slorouter.state.backends import Backend, BackendSet
from slorouter.state.snapshot import Snapshot

SCALERS = ("scaler", *BASELINES)


@dataclass(frozen=True, slots=True)
class ScalingOptions:
    """``scaler``: ``scaler`` (the router's per-tier scaler, with ``autoscale``; default:
    the defaults with ``provisioning_delay_s`` and ``max_backends`` = ``max_servers``) or
    a baseline (``keda-queue``, ``utilisation``, ``wva-spare``, with ``pool``: its
    interval, floor, ceiling and scale-down stabilisation; new servers join the loosest
    tier's label — the baselines' policies ignore tiers)."""

    scaler: str = "scaler"
    provisioning_delay_s: float = 120.0
    max_servers: int = 64
    autoscale: AutoscaleConfig | None = None
    pool: PoolLimits | None = None

    def __post_init__(self) -> None:
        if self.scaler not in SCALERS:
            raise ValueError(f"unknown scaler {self.scaler!r} (known: {', '.join(SCALERS)})")
        if self.provisioning_delay_s < 0:
            raise ValueError("provisioning_delay_s must be >= 0")

    def config(self) -> AutoscaleConfig:
        if self.autoscale is not None:
            return self.autoscale
        return AutoscaleConfig(
            enabled=True, provisioning_delay_s=self.provisioning_delay_s, max_backends=self.max_servers
        )


@dataclass(slots=True)
class Server:
    id: str
    tier: str
    asked_at: float
    ready_at: float
    left_at: float | None = None  # left the set, or its ask was cancelled
    joined: bool = False


@dataclass(slots=True)
class SimScaling:
    """The actuator of one run (see the module docs). The simulator calls :meth:`tick`,
    :meth:`arrive` and :meth:`drained`; each returns whether the backend set changed
    (then :attr:`backends` and :attr:`healthy` are the new ones and :meth:`take_joined`
    lists the servers that need an engine)."""

    opt: ScalingOptions
    backends: BackendSet
    start: float
    scaler: Scaler | PoolScaler = field(init=False)
    servers: dict[str, Server] = field(default_factory=dict)
    leaving: set[str] = field(default_factory=set)
    decisions: int = 0
    moved: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, servers provisioned)
    _joined: list[str] = field(default_factory=list)
    _asked: list[float] = field(default_factory=list)
    _made: int = 0

    def __post_init__(self) -> None:
        tiers = self.backends.tiers
        if self.opt.scaler == "scaler":
            self.scaler = Scaler(self.opt.config(), tiers, start=self.start)
        else:
            cls = BASELINES[self.opt.scaler]
            pool = self.opt.pool or PoolLimits(cls.default_interval_s, max_servers=self.opt.max_servers)
            self.scaler = cls(pool, tiers[-1].name)
        for b in self.backends.backends:
            self.servers[b.id] = Server(b.id, b.tier, self.start, self.start, joined=True)
        self._made = len(self.backends)
        self._mark(self.start)

    @property
    def interval_s(self) -> float:
        return self.scaler.cfg.interval_s if isinstance(self.scaler, Scaler) else self.scaler.interval_s

    @property
    def healthy(self) -> list[str]:
        return [b.id for b in self.backends.backends if b.id not in self.leaving]

    def tick(self, snap: Snapshot, gauges: Callable[[], Mapping[str, EngineGauges]]) -> bool:
        leaving = frozenset(self.leaving)
        if isinstance(self.scaler, Scaler):
            r = self.scaler.tick(snap, leaving)
        else:
            r = self.scaler.tick(snap, leaving, gauges())
        return self._apply(r, snap)

    def take_asked(self) -> list[float]:
        """When the servers asked for since the last call become ready (for the event heap)."""
        out, self._asked = self._asked, []
        return out

    def arrive(self, now: float) -> bool:
        """Servers whose provisioning delay is over join their tier."""
        due = [s for s in self.servers.values() if not s.joined and s.left_at is None and s.ready_at <= now]
        if not due:
            return False
        for s in sorted(due, key=lambda s: int(s.id[1:])):
            s.joined = True
            self._joined.append(s.id)
        tiers = self.backends.tiers
        new = [Backend(s.id, f"sim://{s.id}", tier=s.tier) for s in due]
        self.backends = BackendSet([*self.backends.backends, *new], tiers)
        return True

    def drained(self, backend_id: str, now: float) -> bool:
        """A leaving server's last request finished: it leaves the set."""
        if backend_id not in self.leaving:
            return False
        self.leaving.discard(backend_id)
        self._remove(backend_id, now)
        return True

    def take_joined(self) -> list[str]:
        out, self._joined = self._joined, []
        return out

    # -- acting on a tick ------------------------------------------------------------

    def _apply(self, r: TickResult, snap: Snapshot) -> bool:
        now = snap.now
        changed = False
        if r.move:
            present = {k: v for k, v in r.move.items() if k in self.backends}
            if present:
                self.backends = self.backends.with_tiers(present)
                for bid, tier in present.items():
                    self.servers[bid].tier = tier
                self.moved += len(present)
                changed = True
        for bid in r.release:
            if bid not in self.backends or bid in self.leaving:
                continue
            load = snap.loads.get(bid)
            if load is None or load.running == 0:
                self._remove(bid, now)
            else:
                self.leaving.add(bid)
            changed = True
        for d in r.decisions:
            self.decisions += 1
            asked = sorted(
                (s for s in self.servers.values() if s.tier == d.tier and not s.joined and s.left_at is None),
                key=lambda s: -s.asked_at,
            )
            want = max(0, d.desired - d.current)
            for s in asked[: max(0, len(asked) - want)]:  # newest first
                s.left_at = now
            for _ in range(want - len(asked)):
                sid = f"s{self._made}"
                self._made += 1
                self.servers[sid] = Server(sid, d.tier, now, now + self.opt.provisioning_delay_s)
                self._asked.append(now + self.opt.provisioning_delay_s)
        self._mark(now)
        return changed

    def _remove(self, bid: str, now: float) -> None:
        self.backends = BackendSet([b for b in self.backends.backends if b.id != bid], self.backends.tiers)
        self.servers[bid].left_at = now
        self._mark(now)

    def _mark(self, now: float) -> None:
        n = sum(1 for s in self.servers.values() if s.left_at is None)
        if not self.timeline or self.timeline[-1][1] != n:
            self.timeline.append((now, n))

    # -- the bill --------------------------------------------------------------------

    def server_seconds(self, t0: float, t1: float) -> float:
        """Provisioned server-seconds within ``[t0, t1]`` (see the module docs)."""
        total = 0.0
        for s in self.servers.values():
            a = max(t0, s.asked_at)
            b = min(t1, s.left_at if s.left_at is not None else t1)
            total += max(0.0, b - a)
        return total

    def summary(self, t0: float, t1: float) -> dict[str, Any]:
        ss = self.server_seconds(t0, t1)
        counts: dict[str, int] = {}
        if isinstance(self.scaler, Scaler):
            for st in self.scaler.tiers.values():
                for k, v in st.counts.items():
                    counts[k] = counts.get(k, 0) + v
        else:
            counts = dict(self.scaler.counts)
        started = [s for s in self.servers.values() if s.asked_at > self.start]
        return {
            "scaler": self.opt.scaler,
            "provisioning_delay_s": self.opt.provisioning_delay_s,
            "window_s": [t0, t1],
            "server_seconds": ss,
            "mean_servers": ss / (t1 - t0) if t1 > t0 else None,
            "peak_servers": max((n for _, n in self.timeline), default=0),
            "decisions": self.decisions,
            "decisions_by_kind": counts,
            "servers_asked": len(started),
            "asks_cancelled": sum(1 for s in started if not s.joined and s.left_at is not None),
            "servers_released": sum(1 for s in self.servers.values() if s.joined and s.left_at is not None),
            "servers_moved": self.moved,
            "timeline": [[round(t, 3), n] for t, n in self.timeline],
        }


def oracle_server_seconds(
    env: Envelope | None,
    rate: float,
    shares: Mapping[str, float],
    costs: Mapping[str, float],
    t0: float,
    t1: float,
) -> float:
    """``∫ Σ_tier ceil(λ_tier(t) · cost_tier) dt`` over ``[t0, t1]``: every tier holds
    exactly the servers its fluid load needs, with no delay (``λ_tier = rate · m(t) ·
    share``; ``env`` None: a constant rate)."""
    total = sum(shares.values()) or 1.0

    def servers(m: float) -> int:
        return sum(math.ceil(rate * m * shares[t] / total * costs[t] - 1e-9) for t in shares)

    if env is None:
        return servers(1.0) * (t1 - t0)
    cuts = {t0, t1}
    period = env.period_s
    k0 = 0 if period is None else math.floor(t0 / period)
    k1 = 0 if period is None else math.floor(t1 / period)
    for k in range(k0, k1 + 1):
        base = 0.0 if period is None else k * period
        cuts.update(base + s for s in env.starts if t0 < base + s < t1)
    pts = sorted(cuts)
    return sum(servers(env.at((a + b) / 2)) * (b - a) for a, b in itertools.pairwise(pts))
