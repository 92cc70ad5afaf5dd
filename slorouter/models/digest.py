"""A t-digest with forgetting and a cached quantile (shared by the latency and length models).

:class:`DecayingDigest` wraps a ``fastdigest.TDigest``. Forgetting is exponential in
clock time: every observation's weight halves every ``half_life_s`` seconds. It is
applied lazily, at most once per ``decay_interval_s``, by rebuilding the digest from
its centroids with scaled weights (~35 µs at 100 centroids), so an idle digest costs
nothing. ``quantile(q)`` is cached until the next update or decay, so a routing decision
is a dictionary lookup. ``mass()`` is the decayed number of observations: what a
prediction "rests on". ``to_state`` / ``from_state``: its contents (centroids and the
time of the last decay, as an age) as a plain dict; the settings come from the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastdigest import TDigest

from slorouter.models.saved import StateError, age, field, section

DEFAULT_CENTROIDS = 100
STATE_VERSION = 1


class DecayingDigest:
    __slots__ = ("_cache", "_digest", "_stamp", "decay_interval_s", "half_life_s", "max_centroids")

    def __init__(
        self,
        now: float,
        half_life_s: float = 30.0,
        decay_interval_s: float = 1.0,
        max_centroids: int = DEFAULT_CENTROIDS,
    ) -> None:
        self.half_life_s = half_life_s
        self.decay_interval_s = decay_interval_s
        self.max_centroids = max_centroids
        self._digest = TDigest(max_centroids)
        self._stamp = now
        self._cache: dict[float, float] = {}

    def _decay(self, now: float) -> None:
        dt = now - self._stamp
        if dt < self.decay_interval_s or self.half_life_s <= 0 or self.half_life_s == float("inf"):
            return
        self._stamp = now
        if self._digest.is_empty():
            return
        f = 0.5 ** (dt / self.half_life_s)
        cents = self._digest.centroids
        if self._digest.mass() * f < 1e-3:
            self._digest = TDigest(self.max_centroids)
        else:
            self._digest = TDigest.from_values(
                [m for m, _ in cents], [c * f for _, c in cents], self.max_centroids
            )
        self._cache.clear()

    def add(self, values: Sequence[float], now: float, weight: float | None = None) -> None:
        """Add observations (one batch update); ``weight`` applies to each of them."""
        if not values:
            return
        self._decay(now)
        if weight is None:
            self._digest.batch_update(values)
        else:
            self._digest.merge_inplace(TDigest.from_values(values, weight, self.max_centroids))
        self._cache.clear()

    def merge_from(self, other: DecayingDigest) -> None:
        self._digest.merge_inplace(other._digest)
        self._cache.clear()

    def quantile(self, q: float, now: float | None = None) -> float:
        """The ``q`` quantile (cached); NaN when empty."""
        if now is not None:
            self._decay(now)
        v = self._cache.get(q)
        if v is None:
            v = self._digest.quantile(q) if not self._digest.is_empty() else float("nan")
            self._cache[q] = v
        return v

    def cdf(self, x: float) -> float:
        return 0.0 if self._digest.is_empty() else float(self._digest.cdf(x))

    def mass(self, now: float | None = None) -> float:
        if now is not None:
            self._decay(now)
        return 0.0 if self._digest.is_empty() else float(self._digest.mass())

    def max(self) -> float:
        return float("nan") if self._digest.is_empty() else float(self._digest.max())

    def mean(self) -> float:
        return float("nan") if self._digest.is_empty() else float(self._digest.mean())

    # -- saved state -------------------------------------------------------------------

    def to_state(self, now: float) -> dict[str, Any]:
        return {"v": STATE_VERSION, "age_s": now - self._stamp, "centroids": self._digest.to_dict()}

    @classmethod
    def from_state(
        cls,
        raw: Any,
        now: float,
        where: str,
        half_life_s: float,
        decay_interval_s: float,
        max_centroids: int = DEFAULT_CENTROIDS,
    ) -> DecayingDigest:
        """A digest with these settings and the saved contents."""
        sec = section(raw, where, STATE_VERSION)
        stamp = age(sec, where, now)
        data = field(sec, "centroids", where)
        if not isinstance(data, Mapping):
            raise StateError(f"{where}.centroids: must be an object")
        try:
            td = TDigest.from_dict(dict(data))
        except (TypeError, ValueError, KeyError) as e:
            raise StateError(f"{where}.centroids: {e}") from None
        if not td.is_empty() and not (math.isfinite(td.mass()) and math.isfinite(td.max())):
            raise StateError(f"{where}.centroids: non-finite values")
        out = cls(stamp, half_life_s, decay_interval_s, max_centroids)
        out._digest = td
        return out
