"""Warm restart: the learned latency and length models to bytes and back (pure, no I/O).

What is kept (JSON, ``format`` 2):

* latency, per backend id: every learned field of its state (fitted and conservative
  coefficients, quantile ratio, decayed normal equations, every load bucket's t-digest
  and decayed load sums, the ratio digest, counts), and the fleet-wide learned
  statistics (prompt tokens per output token). The *prior* (profile or engine defaults)
  is not saved: it comes from the config of the router that loads;
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

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import orjson
from fastdigest import TDigest

from slorouter.models.digest import DecayingDigest
from slorouter.models.latency import OnlineLatency, _Bucket
from slorouter.models.lengths import OnlineLengths
from slorouter.models.static import LinearStep

FORMAT = 2


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
#
# Every field of a backend's state is either learned (saved), or comes from the config
# (the prior: rebuilt by the loading router), or is transient. Learned fields are saved
# generically by type (numbers, lists of numbers, LinearStep coefficients; names ending in
# ``stamp`` or ``_at`` are clock times, saved as ages), so a field added to the model is
# kept without touching this module — as long as it is one of those types. A field of
# another type is reported by :func:`unsaved_fields` (a unit test keeps that list empty).

STATE_FROM_CONFIG = frozenset({"prior", "limits", "prior_ratio", "prior_sums", "source"})
STATE_TRANSIENT = frozenset({"next_batch_at", "refit_at", "eff_limits"})
STATE_SPECIAL = frozenset({"buckets", "ratio"})
MODEL_LEARNED_PREFIX = "_rho_"  # OnlineLatency's fleet-wide learned statistics (_rho_p, _rho_n, …)


def _is_time(name: str) -> bool:
    return name.endswith(("stamp", "_at"))


def _value_out(name: str, v: Any, now: float) -> Any:
    if _is_time(name) and isinstance(v, int | float):
        return {"age_s": now - v}
    if isinstance(v, LinearStep):
        return {"step": [v.c0_s, v.c_batch_s, v.c_kv_s, v.c_prefill_s]}
    if isinstance(v, bool) or not isinstance(v, int | float | list):
        raise TypeError(name)
    if isinstance(v, list) and not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
        raise TypeError(name)
    return v


def _value_in(where: str, raw: Any, now: float, current: Any) -> Any:
    if isinstance(raw, Mapping) and "age_s" in raw:
        return now - _num(raw["age_s"], where, 0.0)
    if isinstance(raw, Mapping) and "step" in raw:
        vals = raw["step"]
        if not isinstance(vals, list) or len(vals) != 4:
            raise StateError(f"{where}: must be 4 coefficients")
        return LinearStep(*(_num(x, where, 0.0) for x in vals))
    if isinstance(raw, list):
        out = [_num(x, where) for x in raw]
        if isinstance(current, list) and len(current) != len(out):
            raise StateError(f"{where}: must have {len(current)} numbers")
        return out
    v = _num(raw, where)
    return int(v) if isinstance(current, int) and not isinstance(current, bool) else v


def _slots(obj: object) -> list[str]:
    return [n for n in getattr(type(obj), "__slots__", ()) if n not in STATE_FROM_CONFIG | STATE_TRANSIENT]


def unsaved_fields(model: OnlineLatency) -> list[str]:
    """Fields of the model's state this module cannot save (should be empty)."""
    bad = []
    st = model._state("__probe__")
    try:
        for name in _slots(st):
            if name not in STATE_SPECIAL:
                try:
                    _value_out(name, getattr(st, name), 0.0)
                except TypeError:
                    bad.append(name)
    finally:
        model._states.pop("__probe__", None)
    return bad


def _latency_out(model: OnlineLatency, now: float) -> dict[str, Any]:
    backends: dict[str, Any] = {}
    for bid, st in model._states.items():
        fields: dict[str, Any] = {}
        for name in _slots(st):
            v = getattr(st, name)
            if name == "ratio":
                fields[name] = None if v is None else _digest_out(v, now)
            elif name == "buckets":
                fields[name] = [
                    [key, b.n, b.sum_b, b.sum_kv, now - b.stamp, _digest_out(b.digest, now)]
                    for key, b in v.items()
                ]
            else:
                with contextlib.suppress(TypeError):  # see unsaved_fields()
                    fields[name] = _value_out(name, v, now)
        backends[bid] = fields
    fleet = {
        k: _value_out(k, v, now)
        for k, v in vars(model).items()
        if k.startswith(MODEL_LEARNED_PREFIX) and isinstance(v, int | float)
    }
    return {"backends": backends, "fleet": fleet}


def _buckets_in(where: str, buckets: Any, now: float, template: DecayingDigest) -> dict[int, _Bucket]:
    if not isinstance(buckets, list):
        raise StateError(f"{where}: must be a list")
    bks: dict[int, _Bucket] = {}
    for i, b in enumerate(buckets):
        if not isinstance(b, list) or len(b) != 6 or not isinstance(b[0], int):
            raise StateError(f"{where}[{i}]: must be [key, n, sum_b, sum_kv, age_s, digest]")
        bk = _Bucket(_digest_in(b[5], now, template), now - _num(b[4], "age_s", 0.0))
        bk.n = _num(b[1], "n", 0.0)
        bk.sum_b = _num(b[2], "sum_b")
        bk.sum_kv = _num(b[3], "sum_kv")
        bks[b[0]] = bk
    return bks


def _latency_in(
    model: OnlineLatency, raw: Any, now: float
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """Validated values per backend, and fleet-wide ones (nothing applied yet)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("backends", {}), Mapping):
        raise StateError("latency: must be an object with backends")
    template = model._digest(now)
    fresh = model._state("__probe__")
    model._states.pop("__probe__", None)
    known = set(_slots(fresh))
    parsed: list[tuple[str, dict[str, Any]]] = []
    for bid, fields in raw.get("backends", {}).items():
        where = f"latency.{bid}"
        if not isinstance(fields, Mapping):
            raise StateError(f"{where}: must be an object")
        vals: dict[str, Any] = {}
        for name, v in fields.items():
            if name not in known:
                continue  # a field this version of the model no longer has
            if name == "buckets":
                vals[name] = _buckets_in(f"{where}.buckets", v, now, template)
            elif name == "ratio":
                vals[name] = None if v is None else _digest_in(v, now, template)
            else:
                vals[name] = _value_in(f"{where}.{name}", v, now, getattr(fresh, name))
        parsed.append((str(bid), vals))
    fleet_raw = raw.get("fleet", {})
    if not isinstance(fleet_raw, Mapping):
        raise StateError("latency.fleet: must be an object")
    fleet = {
        k: _value_in(f"latency.fleet.{k}", v, now, getattr(model, k))
        for k, v in fleet_raw.items()
        if k.startswith(MODEL_LEARNED_PREFIX) and isinstance(getattr(model, k, None), int | float)
    }
    return parsed, fleet


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
    lat, fleet = _latency_in(latency, raw.get("latency", {}), now)
    lens = _lengths_in(lengths, raw.get("lengths", []), now)
    for bid, vals in lat:
        st = latency._state(bid)
        for name, v in vals.items():
            setattr(st, name, v)
    for k, v in fleet.items():
        setattr(latency, k, v)
    lengths._digests.update(lens)
    lengths._cache.clear()
    saved = raw.get("saved_at")
    return {
        "backends": len(lat),
        "length_digests": len(lens),
        "observations": sum(int(v.get("observations", 0)) for _, v in lat),
        "saved_at": saved if isinstance(saved, int | float) else None,
    }
