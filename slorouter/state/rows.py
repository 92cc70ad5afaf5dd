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
With what the holder's latency model learned recently (:mod:`slorouter.state.learning`),
three more arrays follow: per observation (backend, prompt and output tokens, its first
token's load and time, how many fit points and windows), the fit points and the windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from slorouter.models.latency.share import Observation
from slorouter.state.learning import Learned

ROW_VERSION = 3
READABLE = (2, 3)  # version 2: no learned observations
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
    learned: Learned | None = None  # the holder's recent latency-model observations

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
            and self.learned == other.learned
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
        parts = [
            np.ascontiguousarray(self.counters, dtype="<i8").tobytes(),
            np.ascontiguousarray(self.tiers, dtype="<i4").tobytes(),
            np.ascontiguousarray(self.slack_idx, dtype="<i4").tobytes(),
            np.ascontiguousarray(self.slack, dtype="<f8").tobytes(),
        ]
        if self.learned is not None:
            d["lo"], arrays = _learned_out(self.learned)
            parts.extend(a.tobytes() for a in arrays)
        head = orjson.dumps(d)
        return head + b"\n" + b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Row:
        """Parse a published row; ValueError on anything malformed (a store skips such a
        row rather than routing on garbage)."""
        try:
            nl = raw.index(b"\n")
            d: Any = orjson.loads(raw[:nl])
            if not isinstance(d, dict) or d.get("v") not in READABLE:
                raise ValueError(f"row version {d.get('v') if isinstance(d, dict) else None!r}")
            ids = tuple(str(x) for x in d["ids"])
            tiers = tuple(str(x) for x in d["tiers"])
            n, t, m = len(ids), len(tiers), int(d["m"])
            body = memoryview(raw)[nl + 1 :]
            sizes = (n * 6 * 8, n * t * 4, m * 4, m * 4 * 8)
            lo = d.get("lo")
            lsizes = _learned_sizes(lo) if lo is not None else ()
            if len(body) != sum(sizes) + sum(lsizes) or m < 0:
                raise ValueError(f"row body of {len(body)} bytes, expected {sum(sizes) + sum(lsizes)}")
            o = 0
            arrs: list[Any] = []
            for size, dt in zip(sizes, ("<i8", "<i4", "<i4", "<f8"), strict=True):
                arrs.append(np.frombuffer(body[o : o + size], dtype=dt))
                o += size
            learned = None
            if lo is not None:
                larrs = []
                for size in lsizes:
                    larrs.append(np.frombuffer(body[o : o + size], dtype="<f8"))
                    o += size
                learned = _learned_in(lo, larrs)
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
                learned=learned,
            )
        except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as e:
            raise ValueError(f"malformed row: {e}") from e


# -- the learned observations on the wire ------------------------------------------------
# per observation (float64 [k, 10]): backend (index into "b"), prompt tokens, output
# tokens, has a first token (0/1), its running, KV and prefill backlog at dispatch, its
# time to first token, fit points, windows; then the fit points [F, 4] and windows [W, 3]
_OBS_COLS = 10


def _learned_out(got: Learned) -> tuple[dict[str, Any], list[F64]]:
    names: dict[str, int] = {}
    meta: list[tuple[float, ...]] = []
    fit: list[tuple[float, float, float, float]] = []
    wins: list[tuple[float, float, float]] = []
    none = (0, 0, 0, 0.0)
    for o in got.observations:
        t = o.ttft
        meta.append(
            (
                names.setdefault(o.backend, len(names)),
                o.prompt_tokens,
                o.output_tokens,
                t is not None,
                *(t or none),
                len(o.fit),
                len(o.windows),
            )
        )
        fit.extend(o.fit)
        wins.extend(o.windows)
    head = {"e": got.epoch, "s": got.seq, "b": list(names), "k": len(meta), "f": len(fit), "w": len(wins)}
    return head, [
        np.array(meta, dtype="<f8").reshape(len(meta), _OBS_COLS),
        np.array(fit, dtype="<f8").reshape(len(fit), 4),
        np.array(wins, dtype="<f8").reshape(len(wins), 3),
    ]


def _learned_sizes(lo: Any) -> tuple[int, int, int]:
    k, f, w = (int(lo[x]) for x in ("k", "f", "w"))
    if min(k, f, w) < 0:
        raise ValueError("negative count of learned observations")
    return k * _OBS_COLS * 8, f * 4 * 8, w * 3 * 8


def _learned_in(lo: Any, arrs: list[Any]) -> Learned:
    """Decoded lazily, from where a reader needs (most rows repeat observations the reader
    already has: their parse costs three array views); an observation that does not match
    the arrays raises ValueError then (a row carries a few: plain lists beat numpy here)."""
    names = [str(x) for x in lo["b"]]
    raw_meta, fit, wins = arrs[0], arrs[1].reshape(-1, 4), arrs[2].reshape(-1, 3)
    k = len(raw_meta) // _OBS_COLS
    checked: list[list[Any]] = []

    def decode(i: int) -> tuple[Observation, ...]:
        if i >= k:
            return ()
        if not checked:
            meta = raw_meta.reshape(-1, _OBS_COLS).tolist()
            nb, tf, tw = len(names), 0, 0
            for m in meta:
                if not (0 <= m[0] < nb and m[8] >= 0 and m[9] >= 0):
                    raise ValueError("learned observations do not match their arrays")
                tf += int(m[8])
                tw += int(m[9])
            if tf != len(fit) or tw != len(wins):
                raise ValueError("learned observations do not match their arrays")
            checked.append(meta)
        meta = checked[0]
        fa = sum(int(m[8]) for m in meta[:i])
        wa = sum(int(m[9]) for m in meta[:i])
        fit_l = fit[fa:].tolist()
        win_l = wins[wa:].tolist()
        out: list[Observation] = []
        fa = wa = 0
        for bi, prompt, output, has, run, kv, backlog, ttft_s, nf, nw in meta[i:]:
            fb, wb = fa + int(nf), wa + int(nw)
            out.append(
                Observation(
                    names[int(bi)],
                    int(prompt),
                    int(output),
                    (int(run), int(kv), int(backlog), ttft_s) if has else None,
                    tuple((p[0], p[1], p[2], p[3]) for p in fit_l[fa:fb]),
                    tuple((p[0], p[1], p[2]) for p in win_l[wa:wb]),
                )
            )
            fa, wa = fb, wb
        return tuple(out)

    return Learned(float(lo["e"]), int(lo["s"]), k, decode=decode)
