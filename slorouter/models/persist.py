"""Warm restart: the learned latency and length models to bytes and back (pure, no I/O).

What is kept (JSON, ``format`` 1):

* latency, per backend id: the fitted mean coefficients, the quantile ratio, the
  decayed normal equations, every load bucket's t-digest and decayed load sums, the
  ratio digest, and the counts — i.e. everything learned. The *prior* (profile or
  engine defaults) is not saved: it comes from the config of the router that loads;
* lengths: every (tier, key id, model) t-digest of output lengths.

Time: clocks are monotonic per process, so each stamp is saved as an age (``now -
stamp``) and restored relative to the loading process's ``now``. The time the router
was down is **not** counted as forgetting: a restart neither ages nor refreshes what
was learned; forgetting resumes with the next observations.

:func:`restore` validates everything before changing anything and raises
:class:`StateError` on a file it cannot use (wrong format, corrupt numbers); the
router then starts blind and says so. This module reads the models' internals (it
lives next to them, in the same package, and the round-trip test in
``tests/unit/test_persist.py`` pins that coupling).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson
from fastdigest import TDigest

from slorouter.models.digest import DecayingDigest
from slorouter.models.latency import OnlineLatency, _Bucket
from slorouter.models.lengths import OnlineLengths
from slorouter.models.static import LinearStep

FORMAT = 1


class StateError(ValueError):
    pass


# -- digests -------------------------------------------------------------------------------


def _digest_out(d: DecayingDigest, now: float) -> dict[str, Any]:
    return {"age_s": now - d._stamp, "digest": d._digest.to_dict()}


def _digest_in(raw: Any, now: float, template: DecayingDigest) -> DecayingDigest:
    """A digest with ``template``'s settings and the saved contents."""
    if not isinstance(raw, Mapping):
        raise StateError("a digest must be an object")
    age = _num(raw.get("age_s"), "age_s", lo=0.0)
    data = raw.get("digest")
    if not isinstance(data, Mapping):
        raise StateError("digest: must be an object")
    try:
        td = TDigest.from_dict(dict(data))
    except (TypeError, ValueError, KeyError) as e:
        raise StateError(f"digest: {e}") from None
    if not td.is_empty() and not (math.isfinite(td.mass()) and math.isfinite(td.max())):
        raise StateError("digest: non-finite values")
    out = DecayingDigest(now - age, template.half_life_s, template.decay_interval_s, template.max_centroids)
    out._digest = td
    return out


def _num(v: Any, what: str, lo: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise StateError(f"{what}: must be a finite number")
    if lo is not None and v < lo:
        raise StateError(f"{what}: must be >= {lo}")
    return float(v)


# -- latency -------------------------------------------------------------------------------


def _latency_out(model: OnlineLatency, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for bid, st in model._states.items():
        c = st.coef
        out[bid] = {
            "coef": [c.c0_s, c.c_batch_s, c.c_kv_s, c.c_prefill_s],
            "ratio_q": st.ratio_q,
            "sums": list(st.sums),
            "age_s": now - st.stamp,
            "n_outcomes": st.n_outcomes,
            "observations": st.observations,
            "ratio": None if st.ratio is None else _digest_out(st.ratio, now),
            "buckets": [
                [key, b.n, b.sum_b, b.sum_kv, now - b.stamp, _digest_out(b.digest, now)]
                for key, b in st.buckets.items()
            ],
        }
    return out


def _latency_in(model: OnlineLatency, raw: Any, now: float) -> list[tuple[str, dict[str, Any]]]:
    """Validated per-backend values (nothing applied yet)."""
    if not isinstance(raw, Mapping):
        raise StateError("latency: must be an object")
    template = model._digest(now)
    parsed: list[tuple[str, dict[str, Any]]] = []
    for bid, s in raw.items():
        where = f"latency.{bid}"
        if not isinstance(s, Mapping):
            raise StateError(f"{where}: must be an object")
        coef = s.get("coef")
        sums = s.get("sums")
        if not isinstance(coef, list) or len(coef) != 4:
            raise StateError(f"{where}.coef: must be 4 numbers")
        if not isinstance(sums, list) or len(sums) != 9:
            raise StateError(f"{where}.sums: must be 9 numbers")
        buckets = s.get("buckets")
        if not isinstance(buckets, list):
            raise StateError(f"{where}.buckets: must be a list")
        bks: dict[int, _Bucket] = {}
        for i, b in enumerate(buckets):
            if not isinstance(b, list) or len(b) != 6 or not isinstance(b[0], int):
                raise StateError(f"{where}.buckets[{i}]: must be [key, n, sum_b, sum_kv, age_s, digest]")
            bk = _Bucket(_digest_in(b[5], now, template), now - _num(b[4], "age_s", 0.0))
            bk.n = _num(b[1], "n", 0.0)
            bk.sum_b = _num(b[2], "sum_b")
            bk.sum_kv = _num(b[3], "sum_kv")
            bks[b[0]] = bk
        ratio = s.get("ratio")
        parsed.append(
            (
                str(bid),
                {
                    "coef": LinearStep(*(_num(x, f"{where}.coef", 0.0) for x in coef)),
                    "ratio_q": _num(s.get("ratio_q"), f"{where}.ratio_q", 0.0),
                    "sums": [_num(x, f"{where}.sums") for x in sums],
                    "stamp": now - _num(s.get("age_s"), f"{where}.age_s", 0.0),
                    "n_outcomes": int(_num(s.get("n_outcomes"), f"{where}.n_outcomes", 0.0)),
                    "observations": int(_num(s.get("observations"), f"{where}.observations", 0.0)),
                    "ratio": None if ratio is None else _digest_in(ratio, now, template),
                    "buckets": bks,
                },
            )
        )
    return parsed


# -- lengths -------------------------------------------------------------------------------


def _lengths_out(model: OnlineLengths, now: float) -> list[list[Any]]:
    return [[t, k, n, _digest_out(d, now)] for (t, k, n), d in model._digests.items()]


def _lengths_in(model: OnlineLengths, raw: Any, now: float) -> dict[tuple[str, str, str], DecayingDigest]:
    if not isinstance(raw, list):
        raise StateError("lengths: must be a list")
    s = model.settings
    template = DecayingDigest(now, s.half_life_s, s.decay_interval_s, s.max_centroids)
    out: dict[tuple[str, str, str], DecayingDigest] = {}
    for i, e in enumerate(raw):
        if not isinstance(e, list) or len(e) != 4 or not all(isinstance(x, str) for x in e[:3]):
            raise StateError(f"lengths[{i}]: must be [tier, kind, name, digest]")
        out[(e[0], e[1], e[2])] = _digest_in(e[3], now, template)
    return out


# -- the file ------------------------------------------------------------------------------


def snapshot(latency: OnlineLatency, lengths: OnlineLengths, now: float, wall_time: float) -> bytes:
    """Everything learned, as JSON bytes."""
    return orjson.dumps(
        {
            "format": FORMAT,
            "saved_at": wall_time,
            "latency": _latency_out(latency, now),
            "lengths": _lengths_out(lengths, now),
        }
    )


def restore(data: bytes, latency: OnlineLatency, lengths: OnlineLengths, now: float) -> dict[str, Any]:
    """Load :func:`snapshot` bytes into the (fresh) models; returns a summary. Raises
    :class:`StateError` (and changes nothing) when the data cannot be used."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise StateError(f"not JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise StateError("the top level must be an object")
    if raw.get("format") != FORMAT:
        raise StateError(f"unknown format {raw.get('format')!r} (this router reads format {FORMAT})")
    lat = _latency_in(latency, raw.get("latency", {}), now)
    lens = _lengths_in(lengths, raw.get("lengths", []), now)
    for bid, v in lat:
        st = latency._state(bid)
        st.coef = v["coef"]
        st.ratio_q = v["ratio_q"]
        st.lin = st.coef.scaled(st.ratio_q)
        st.sums = v["sums"]
        st.stamp = v["stamp"]
        st.n_outcomes = v["n_outcomes"]
        st.observations = v["observations"]
        st.ratio = v["ratio"]
        st.buckets = v["buckets"]
    lengths._digests.update(lens)
    lengths._cache.clear()
    saved = raw.get("saved_at")
    return {
        "backends": len(lat),
        "length_digests": len(lens),
        "observations": sum(v["observations"] for _, v in lat),
        "saved_at": saved if isinstance(saved, int | float) else None,
    }
