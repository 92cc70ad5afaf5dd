"""Where windows go: the digests of one backend.

* :class:`LoadBuckets`: per load bucket (running: exact up to 16, then 8 bins per
  doubling; KV: 4 bins per doubling from 512 tokens; :func:`bucket_key`), a forgetting
  t-digest of the windows' paces and their decayed mean load — the bucket's own
  quantile, which the model blends into its prediction by the bucket's support.
* :class:`QuantileRatio`: the digest of ``window pace / fitted pace`` and ``value``, its
  *q*-quantile blended with the prior's ratio (worth ``min_support`` windows): the
  factor that makes the fitted mean pace a conservative quantile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from slorouter.models.digest import DecayingDigest
from slorouter.models.latency.settings import LatencySettings
from slorouter.models.latency.windows import Window
from slorouter.models.saved import StateError, age, field, num, section
from slorouter.models.static import LinearStep

STATE_VERSION = 1  # also the binning of bucket_key: a new binning is a new version


def bucket_key(batch: int, kv_tokens: int) -> int:
    """The load bucket of ``(batch, kv_tokens)`` (an int; see the module docs)."""
    b = batch if batch <= 16 else 16 + int(8.0 * math.log2(batch / 16.0))
    k = 0 if kv_tokens < 512 else 1 + int(4.0 * math.log2(kv_tokens / 512.0))
    return b * 256 + k


def _learnable(gap: float, running: float) -> bool:
    return 0.0 < gap < 60.0 and running >= 1


class LoadBucket:
    __slots__ = ("digest", "n", "stamp", "sum_b", "sum_kv")

    def __init__(self, digest: DecayingDigest, now: float) -> None:
        self.digest = digest
        self.n = 0.0  # decayed windows
        self.sum_b = 0.0  # decayed Σ running
        self.sum_kv = 0.0  # decayed Σ kv tokens
        self.stamp = now

    def add(self, gaps: list[float], sb: float, skv: float, now: float, half_life: float) -> None:
        f = 0.5 ** ((now - self.stamp) / half_life)
        self.stamp = now
        self.n = self.n * f + len(gaps)
        self.sum_b = self.sum_b * f + sb
        self.sum_kv = self.sum_kv * f + skv
        self.digest.add(gaps, now)

    def to_state(self, key: int, now: float) -> dict[str, Any]:
        return {
            "key": key,
            "windows": self.n,
            "sum_running": self.sum_b,
            "sum_kv_tokens": self.sum_kv,
            "age_s": now - self.stamp,
            "digest": self.digest.to_state(now),
        }


class LoadBuckets:
    __slots__ = ("by_key",)

    def __init__(self) -> None:
        self.by_key: dict[int, LoadBucket] = {}

    def add(self, wins: Sequence[Window], now: float, settings: LatencySettings) -> None:
        """Windows into their buckets' digests (one batch update per bucket)."""
        groups: dict[int, tuple[list[float], list[float]]] = {}
        for gap, r, kv in wins:
            if not _learnable(gap, r):
                continue
            key = bucket_key(round(r), round(kv))
            grp = groups.get(key)
            if grp is None:
                grp = groups[key] = ([], [0.0, 0.0])
            grp[0].append(gap)
            grp[1][0] += r
            grp[1][1] += kv
        for key, (gaps, (sb, skv)) in groups.items():
            bk = self.by_key.get(key)
            if bk is None:
                bk = self.by_key[key] = LoadBucket(settings.digest(now), now)
            bk.add(gaps, sb, skv, now, settings.half_life_s)

    def to_state(self, now: float) -> dict[str, Any]:
        return {"v": STATE_VERSION, "buckets": [b.to_state(k, now) for k, b in self.by_key.items()]}

    @classmethod
    def from_state(cls, raw: Any, now: float, where: str, settings: LatencySettings) -> LoadBuckets:
        sec = section(raw, where, STATE_VERSION)
        items = field(sec, "buckets", where)
        if not isinstance(items, list):
            raise StateError(f"{where}.buckets: must be a list")
        out = cls()
        for i, b in enumerate(items):
            w = f"{where}.buckets[{i}]"
            if not isinstance(b, Mapping):
                raise StateError(f"{w}: must be an object")
            key = field(b, "key", w)
            if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                raise StateError(f"{w}.key: must be a whole number >= 0")
            if key in out.by_key:
                raise StateError(f"{w}.key: {key} twice")
            bk = LoadBucket(settings.saved_digest(field(b, "digest", w), now, f"{w}.digest"), age(b, w, now))
            bk.n = num(field(b, "windows", w), f"{w}.windows", 0.0)
            bk.sum_b = num(field(b, "sum_running", w), f"{w}.sum_running", 0.0)
            bk.sum_kv = num(field(b, "sum_kv_tokens", w), f"{w}.sum_kv_tokens", 0.0)
            out.by_key[key] = bk
        return out


class QuantileRatio:
    __slots__ = ("digest", "prior", "value")

    def __init__(self, prior: float) -> None:
        self.prior = prior  # the prior's ratio: 1, or p90/mean of a profile's points
        self.value = prior
        self.digest: DecayingDigest | None = None  # created with the first ratio

    def add(
        self, wins: Sequence[Window], coef: LinearStep, rho: float, now: float, settings: LatencySettings
    ) -> None:
        """Each window's pace over the pace ``coef`` predicts at its load."""
        cpr = coef.c_prefill_s * rho
        ratios: list[float] = []
        for gap, r, kv in wins:
            if not _learnable(gap, r):
                continue
            pace = coef.c0_s + (coef.c_batch_s + cpr) * r + coef.c_kv_s * kv
            if pace > 0:
                ratios.append(gap / pace)
        if ratios:
            if self.digest is None:
                self.digest = settings.digest(now)
            self.digest.add(ratios, now)

    def refit(self, now: float, settings: LatencySettings) -> None:
        if self.digest is not None:
            m = self.digest.mass(now)
            r = self.digest.quantile(settings.quantile)
            if m > 0 and not math.isnan(r):
                k = settings.min_support
                self.value = max(0.5, (m * r + k * self.prior) / (m + k))

    def to_state(self, now: float) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "value": self.value,
            "digest": None if self.digest is None else self.digest.to_state(now),
        }

    @classmethod
    def from_state(
        cls, raw: Any, now: float, where: str, prior: float, settings: LatencySettings
    ) -> QuantileRatio:
        sec = section(raw, where, STATE_VERSION)
        out = cls(prior)
        out.value = num(field(sec, "value", where), f"{where}.value", 0.0)
        d = field(sec, "digest", where)
        out.digest = None if d is None else settings.saved_digest(d, now, f"{where}.digest")
        return out
