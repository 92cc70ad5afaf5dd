"""A router process's published row: its own per-backend aggregates, as arrays.

A :class:`Row` holds, for the backends its holder has load on, the
:class:`~slorouter.state.load.BackendLoad` counters (``int64 [n, 6]``, ``as_tuple()``
order), residents per tier (``int32 [n, T]``), and up to :data:`SLACK_PER_ROW` slack
entries per backend (the least banked; ``float64 [m, 4]`` with their backend index). On
the wire (Redis, shared memory): one JSON header line (holder, time, decayed arrivals,
queued per tier, backend ids, tier names, shapes, and the small JSON documents: the
policy's control-plane state, the autoscaler's inputs, the run-time backend list) and the
raw little-endian arrays —
parsing costs one small JSON document and four array views, whatever the fleet size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

ROW_VERSION = 2
SLACK_PER_ROW = 2  # slack entries a holder publishes per backend (its least banked)
Counters = tuple[int, int, int, int, int, int]  # BackendLoad.as_tuple() order

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
F64 = npt.NDArray[np.float64]


def _empty_i64(cols: int) -> I64:
    return np.zeros((0, cols), dtype="<i8")


@dataclass(frozen=True, slots=True, eq=False)
class Row:
    holder: str
    at: float  # the publisher's wall clock when built
    arrivals: float  # decayed count of the holder's arrivals (for shares)
    ids: tuple[str, ...] = ()  # backends this holder has load on
    counters: I64 = field(default_factory=lambda: _empty_i64(6))
    tier_names: tuple[str, ...] = ()
    tiers: I32 = field(default_factory=lambda: np.zeros((0, 0), dtype="<i4"))
    slack_idx: I32 = field(default_factory=lambda: np.zeros(0, dtype="<i4"))  # index into ids
    slack: F64 = field(default_factory=lambda: np.zeros((0, 4), dtype="<f8"))
    queued: Mapping[str, int] = field(default_factory=dict)
    control: Any = None  # the policy's shared control-plane state (JSON types), e.g. bin moves
    scale: Any = (
        None  # the autoscaler's fleet-wide inputs and hand-over state (slorouter.actuation.fleetsync)
    )
    fleet: Any = None  # the run-time backend list (registrations, removals, moves; JSON types)

    # -- reading (inspection, tests) -------------------------------------------------

    @property
    def loads(self) -> dict[str, Counters]:
        return {b: tuple(int(x) for x in self.counters[i]) for i, b in enumerate(self.ids)}  # type: ignore[misc]

    def tier_counts(self, backend_id: str) -> dict[str, int]:
        i = self.ids.index(backend_id)
        return {t: int(n) for t, n in zip(self.tier_names, self.tiers[i], strict=True) if n}

    def same(self, other: Row) -> bool:
        """Equal content (arrays compared by value)."""
        return (
            (
                self.holder,
                self.at,
                self.arrivals,
                self.ids,
                self.tier_names,
                dict(self.queued),
                self.control,
                self.scale,
                self.fleet,
            )
            == (
                other.holder,
                other.at,
                other.arrivals,
                other.ids,
                other.tier_names,
                dict(other.queued),
                other.control,
                other.scale,
                other.fleet,
            )
            and np.array_equal(self.counters, other.counters)
            and np.array_equal(self.tiers, other.tiers)
            and np.array_equal(self.slack_idx, other.slack_idx)
            and np.array_equal(self.slack, other.slack)
        )

    # -- the wire --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {
            "v": ROW_VERSION,
            "holder": self.holder,
            "at": self.at,
            "arrivals": self.arrivals,
            "queued": self.queued,
            "ids": self.ids,
            "tiers": self.tier_names,
            "m": len(self.slack_idx),
        }
        for key in ("control", "scale", "fleet"):  # JSON documents, only when there is one
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        head = orjson.dumps(d)
        parts = (
            np.ascontiguousarray(self.counters, dtype="<i8").tobytes(),
            np.ascontiguousarray(self.tiers, dtype="<i4").tobytes(),
            np.ascontiguousarray(self.slack_idx, dtype="<i4").tobytes(),
            np.ascontiguousarray(self.slack, dtype="<f8").tobytes(),
        )
        return head + b"\n" + b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Row:
        """Parse a published row; ValueError on anything malformed (a store skips such a
        row rather than routing on garbage)."""
        try:
            nl = raw.index(b"\n")
            d: Any = orjson.loads(raw[:nl])
            if not isinstance(d, dict) or d.get("v") != ROW_VERSION:
                raise ValueError(f"row version {d.get('v') if isinstance(d, dict) else None!r}")
            ids = tuple(str(x) for x in d["ids"])
            tiers = tuple(str(x) for x in d["tiers"])
            n, t, m = len(ids), len(tiers), int(d["m"])
            body = memoryview(raw)[nl + 1 :]
            sizes = (n * 6 * 8, n * t * 4, m * 4, m * 4 * 8)
            if len(body) != sum(sizes) or m < 0:
                raise ValueError(f"row body of {len(body)} bytes, expected {sum(sizes)}")
            o = 0
            arrs: list[Any] = []
            for size, dt in zip(sizes, ("<i8", "<i4", "<i4", "<f8"), strict=True):
                arrs.append(np.frombuffer(body[o : o + size], dtype=dt))
                o += size
            idx = arrs[2]
            if m and (idx.min() < 0 or idx.max() >= n):
                raise ValueError("slack entry of an unknown backend")
            return cls(
                holder=str(d["holder"]),
                at=float(d["at"]),
                arrivals=float(d["arrivals"]),
                ids=ids,
                counters=arrs[0].reshape(n, 6),
                tier_names=tiers,
                tiers=arrs[1].reshape(n, t),
                slack_idx=idx,
                slack=arrs[3].reshape(m, 4),
                queued={str(k): int(v) for k, v in d["queued"].items()},
                control=d.get("control"),
                scale=d.get("scale"),
                fleet=d.get("fleet"),
            )
        except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as e:
            raise ValueError(f"malformed row: {e}") from e
