"""Step samples to windows: the pace over ``window_tokens`` token-steps of one backend.

A response's samples ``(gap_s, running, kv_tokens)`` become

* **fit points** ``(weight, running, kv, gap)``: a long response (``≥ window_tokens``
  samples) gives its windows' means (at most ``max_windows``, evenly spread, each worth
  the stride); a short one its own mean, worth its tokens in windows — so the fit
  learns from every response at once;
* **windows** ``(gap, running, kv)`` for the digests: a long response's own; a short
  one is pooled (:class:`WindowPool`) with the backend's other recent short responses
  until ``window_tokens`` token-steps are in, so a digest's window is always the pace
  over that many token-steps, whatever the lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slorouter.models.latency.fit import FitPoint
from slorouter.models.saved import field, num, section

Sample = tuple[float, int, int]  # (gap_s, running, kv_tokens)
Window = tuple[float, float, float]  # mean (gap_s, running, kv_tokens)
STATE_VERSION = 1


def window_mean(win: Sequence[Sample]) -> Window:
    """Mean (gap, running, kv) of consecutive samples (of at most 16, evenly spread)."""
    n = len(win)
    if n > 16:
        win = win[:: n // 16]
        n = len(win)
    g, r, kv = map(sum, zip(*win, strict=True))
    return g / n, r / n, kv / n


class WindowPool:
    """Short responses of one backend, pooled until a window is full."""

    __slots__ = ("gap_tokens", "kv_tokens", "running_tokens", "tokens")

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.gap_tokens = 0.0  # Σ mean gap · tokens of the pooled responses
        self.running_tokens = 0.0  # Σ mean running · tokens
        self.kv_tokens = 0.0  # Σ mean kv · tokens
        self.tokens = 0.0  # Σ tokens (samples)

    def split(
        self, samples: Sequence[Sample], window_tokens: int, max_windows: int
    ) -> tuple[list[Window], list[FitPoint]]:
        """The windows complete now and the fit points of one response (non-empty)."""
        m = len(samples)
        w = window_tokens
        wins: list[Window] = []
        if m >= w:
            nwin = m // w
            stride = max(1, -(-nwin // max_windows))
            for k in range(0, nwin, stride):
                wins.append(window_mean(samples[k * w : (k + 1) * w]))
            return wins, [(float(stride), r, kv, gap) for gap, r, kv in wins]
        g, r, kv = window_mean(samples)
        self.gap_tokens += g * m
        self.running_tokens += r * m
        self.kv_tokens += kv * m
        self.tokens += m
        if self.tokens >= w:
            n = self.tokens
            wins.append((self.gap_tokens / n, self.running_tokens / n, self.kv_tokens / n))
            self._clear()
        return wins, [(m / w, r, kv, g)]

    def to_state(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "tokens": self.tokens,
            "gap_s_tokens": self.gap_tokens,
            "running_tokens": self.running_tokens,
            "kv_tokens": self.kv_tokens,
        }

    @classmethod
    def from_state(cls, raw: Any, where: str) -> WindowPool:
        sec = section(raw, where, STATE_VERSION)
        out = cls()
        out.tokens = num(field(sec, "tokens", where), f"{where}.tokens", 0.0)
        out.gap_tokens = num(field(sec, "gap_s_tokens", where), f"{where}.gap_s_tokens", 0.0)
        out.running_tokens = num(field(sec, "running_tokens", where), f"{where}.running_tokens", 0.0)
        out.kv_tokens = num(field(sec, "kv_tokens", where), f"{where}.kv_tokens", 0.0)
        return out
