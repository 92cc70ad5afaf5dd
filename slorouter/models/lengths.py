"""The online output-length model (implements :class:`~slorouter.models.base.LengthView`).

Per tier, and per (tier, API key id) and (tier, model), a forgetting t-digest of the
output lengths of requests that finished normally (status ``ok``; cancelled or failed
requests are truncated, not representative). ``bound(tier, generated, max_tokens)`` is
the ``quantile`` (default p90) upper bound of the total output length:

* with ``generated == 0``: the quantile ``q`` of the most specific digest with at least
  ``min_support`` observations (key, then model, then tier); below that, blended with
  the tier's prior (``default_tokens``) by support;
* given ``g`` tokens already produced (the conditional bound, refined as a request
  generates): the quantile of ``X | X > g``, i.e. ``F⁻¹(F(g) + q·(1 − F(g)))``; when
  ``g`` is beyond what was observed, ``g + max(16, g/4)``. Always ``> g``;
* never above ``max_tokens`` when given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slorouter.clock import Clock
from slorouter.models.digest import DecayingDigest
from slorouter.models.saved import StateError, field, section
from slorouter.values import Outcome, Status

STATE_VERSION = 1
DigestKey = tuple[str, str, str]  # (tier, "" | "key" | "model", key id | model name)


@dataclass(frozen=True, slots=True)
class LengthSettings:
    quantile: float = 0.9
    half_life_s: float = 1800.0
    decay_interval_s: float = 10.0
    min_support: float = 32.0
    default_tokens: int = 256  # prior bound before anything is observed
    max_centroids: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1:
            raise ValueError("quantile: must be in (0, 1)")
        if self.default_tokens < 1 or self.min_support <= 0:
            raise ValueError("default_tokens and min_support must be > 0")


class OnlineLengths:
    def __init__(
        self,
        clock: Clock,
        settings: LengthSettings | None = None,
        tier_defaults: Mapping[str, int] | None = None,
    ) -> None:
        self.clock = clock
        self.settings = settings or LengthSettings()
        self._defaults = dict(tier_defaults or {})
        self._digests: dict[DigestKey, DecayingDigest] = {}
        self._cache: dict[tuple[str, str | None, str | None], int] = {}
        self._cache_at = -math.inf

    def _digest(self, key: DigestKey, create: bool) -> DecayingDigest | None:
        d = self._digests.get(key)
        if d is None and create:
            s = self.settings
            d = self._digests[key] = DecayingDigest(
                self.clock.now(), s.half_life_s, s.decay_interval_s, s.max_centroids
            )
        return d

    def _pick(self, tier: str, key: str | None, model: str | None) -> tuple[DecayingDigest | None, float]:
        """The most specific digest with enough support (or the tier's), and its mass."""
        now = self.clock.now()
        for k in ((tier, "key", key), (tier, "model", model)):
            if k[2] is not None:
                d = self._digests.get((k[0], k[1], k[2]))
                if d is not None and (m := d.mass(now)) >= self.settings.min_support:
                    return d, m
        d = self._digests.get((tier, "", ""))
        return d, (0.0 if d is None else d.mass(now))

    def bound(
        self,
        tier: str,
        generated: int = 0,
        max_tokens: int | None = None,
        *,
        key: str | None = None,
        model: str | None = None,
    ) -> int:
        s = self.settings
        if generated <= 0:
            now = self.clock.now()
            if now - self._cache_at > s.decay_interval_s:
                self._cache.clear()
                self._cache_at = now
            ck = (tier, key, model)
            b = self._cache.get(ck)
            if b is None:
                b = self._cache[ck] = self._unconditional(tier, key, model)
        else:
            b = self._conditional(tier, generated, key, model)
        return min(b, max_tokens) if max_tokens is not None else b

    def _unconditional(self, tier: str, key: str | None, model: str | None) -> int:
        s = self.settings
        prior = float(self._defaults.get(tier, s.default_tokens))
        d, m = self._pick(tier, key, model)
        if d is None or m <= 0:
            return max(1, round(prior))
        w = min(1.0, m / s.min_support)
        return max(1, math.ceil(w * d.quantile(s.quantile) + (1 - w) * prior))

    def _conditional(self, tier: str, g: int, key: str | None, model: str | None) -> int:
        s = self.settings
        d, m = self._pick(tier, key, model)
        beyond = g + max(16, g // 4)
        if d is None or m < s.min_support:
            return max(beyond, self._unconditional(tier, key, model))
        f = d.cdf(g)
        if f >= 0.999 or g >= d.max():
            return beyond
        x = d.quantile(f + s.quantile * (1.0 - f))
        return max(g + 1, math.ceil(x))

    # -- learning --------------------------------------------------------------------

    def observe_outcome(self, outcome: Outcome) -> None:
        """Tracker listener: learn the output length of a request that finished normally."""
        if outcome.status is not Status.OK or outcome.output_tokens < 1:
            return
        self.observe(outcome.tier, [outcome.output_tokens], key=outcome.key_id, model=outcome.model or None)

    def observe(
        self, tier: str, lengths: Iterable[int], *, key: str | None = None, model: str | None = None
    ) -> None:
        """Add observed output lengths (also used to warm-start from a workload sample)."""
        vals = [float(x) for x in lengths if x >= 1]
        if not vals:
            return
        now = self.clock.now()
        targets = [(tier, "", "")]
        if key is not None:
            targets.append((tier, "key", key))
        if model is not None:
            targets.append((tier, "model", model))
        for t in targets:
            d = self._digest(t, True)
            assert d is not None
            d.add(vals, now)
        self._cache.clear()

    def describe(self) -> dict[str, Any]:
        now = self.clock.now()
        out: dict[str, Any] = {}
        for (tier, kind, name), d in sorted(self._digests.items()):
            label = tier if not kind else f"{tier}/{kind}={name}"
            out[label] = {
                "observations": round(d.mass(now), 1),
                f"p{round(self.settings.quantile * 100)}": d.quantile(self.settings.quantile),
            }
        return out

    # -- saved state -----------------------------------------------------------------

    def to_state(self, now: float) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "digests": [
                {"tier": t, "kind": k, "name": n, "digest": d.to_state(now)}
                for (t, k, n), d in self._digests.items()
            ],
        }

    def from_state(self, raw: Any, now: float, where: str = "lengths") -> dict[DigestKey, DecayingDigest]:
        """Saved digests, checked (nothing applied: see :meth:`adopt`); raises
        :class:`~slorouter.models.saved.StateError`."""
        sec = section(raw, where, STATE_VERSION)
        items = field(sec, "digests", where)
        if not isinstance(items, list):
            raise StateError(f"{where}.digests: must be a list")
        s = self.settings
        out: dict[DigestKey, DecayingDigest] = {}
        for i, e in enumerate(items):
            w = f"{where}.digests[{i}]"
            if not isinstance(e, Mapping):
                raise StateError(f"{w}: must be an object")
            t, k, n = (field(e, name, w) for name in ("tier", "kind", "name"))
            if not (isinstance(t, str) and isinstance(n, str) and k in ("", "key", "model")):
                raise StateError(f"{w}: tier and name must be strings, kind one of '', 'key', 'model'")
            out[(t, k, n)] = DecayingDigest.from_state(
                field(e, "digest", w), now, f"{w}.digest", s.half_life_s, s.decay_interval_s, s.max_centroids
            )
        return out

    def adopt(self, digests: Mapping[DigestKey, DecayingDigest]) -> None:
        """Take saved digests (from :meth:`from_state`); others stay."""
        self._digests.update(digests)
        self._cache.clear()


def build_lengths(
    clock: Clock,
    *,
    quantile: float = 0.9,
    default_output_tokens: int = 256,
    tier_defaults: Mapping[str, int] | None = None,
) -> OnlineLengths:
    """The wiring's entry point (``models.length_quantile``, ``models.default_output_tokens``)."""
    return OnlineLengths(
        clock, LengthSettings(quantile=quantile, default_tokens=default_output_tokens), tier_defaults
    )
