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
    meta = np.zeros((len(got.observations), _OBS_COLS), dtype="<f8")
    fit: list[tuple[float, float, float, float]] = []
    wins: list[tuple[float, float, float]] = []
    for i, o in enumerate(got.observations):
        t = o.ttft
        meta[i] = (
            names.setdefault(o.backend, len(names)),
            o.prompt_tokens,
            o.output_tokens,
            t is not None,
            *(t if t is not None else (0, 0, 0, 0.0)),
            len(o.fit),
            len(o.windows),
        )
        fit.extend(o.fit)
        wins.extend(o.windows)
    head = {"e": got.epoch, "s": got.seq, "b": list(names), "k": len(meta), "f": len(fit), "w": len(wins)}
    return head, [
        meta,
        np.array(fit, dtype="<f8").reshape(len(fit), 4),
        np.array(wins, dtype="<f8").reshape(len(wins), 3),
    ]


def _learned_sizes(lo: Any) -> tuple[int, int, int]:
    k, f, w = (int(lo[x]) for x in ("k", "f", "w"))
    if min(k, f, w) < 0:
        raise ValueError("negative count of learned observations")
    return k * _OBS_COLS * 8, f * 4 * 8, w * 3 * 8


def _learned_in(lo: Any, arrs: list[Any]) -> Learned:
    """Checked at once (counts, backend indices), decoded lazily from where a reader needs."""
    names = [str(x) for x in lo["b"]]
    meta = arrs[0].reshape(-1, _OBS_COLS)
    fit = arrs[1].reshape(-1, 4)
    wins = arrs[2].reshape(-1, 3)
    k = len(meta)
    if k:
        b, nf, nw = meta[:, 0], meta[:, 8], meta[:, 9]
        if b.min() < 0 or b.max() >= len(names) or nf.min() < 0 or nw.min() < 0:
            raise ValueError("learned observations do not match their arrays")
        if int(nf.sum()) != len(fit) or int(nw.sum()) != len(wins):
            raise ValueError("learned observations do not match their arrays")
    fo = np.r_[0, np.cumsum(meta[:, 8])].astype(np.int64) if k else np.zeros(1, np.int64)
    wo = np.r_[0, np.cumsum(meta[:, 9])].astype(np.int64) if k else np.zeros(1, np.int64)

    def decode(i: int) -> tuple[Observation, ...]:
        if i >= k:
            return ()
        f0, w0 = int(fo[i]), int(wo[i])
        fit_l = [tuple(p) for p in fit[f0:].tolist()]
        win_l = [tuple(p) for p in wins[w0:].tolist()]
        out: list[Observation] = []
        fa = wa = 0
        for bi, prompt, output, has, run, kv, backlog, ttft_s, nf_, nw_ in meta[i:].tolist():
            nfi, nwi = int(nf_), int(nw_)
            out.append(
                Observation(
                    names[int(bi)],
                    int(prompt),
                    int(output),
                    (int(run), int(kv), int(backlog), ttft_s) if has else None,
                    tuple(fit_l[fa : fa + nfi]),
                    tuple(win_l[wa : wa + nwi]),
                )
            )
            fa += nfi
            wa += nwi
        return tuple(out)

    return Learned(float(lo["e"]), int(lo["s"]), k, decode=decode)
