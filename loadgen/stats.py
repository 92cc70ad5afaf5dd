"""Summary statistics with numpy's definitions (what ``vllm bench serve`` uses):
percentiles by linear interpolation between closest ranks (``np.percentile`` default),
population standard deviation (``np.std``), and 0 for an empty list (vLLM's ``or 0``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    n = len(sorted_values)
    if n == 0:
        return 0.0
    k = (n - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, n - 1)
    frac = k - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def std(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / len(values))


def summary_ms(
    name: str, seconds: Iterable[float], pcts: Sequence[float] = PERCENTILES, *, empty_none: bool = False
) -> dict[str, float | None]:
    """``mean_<name>_ms``, ``median_<name>_ms``, ``std_<name>_ms``, ``p<P>_<name>_ms`` as vLLM names
    them. No values: all 0 (vLLM's convention), or all None with ``empty_none``."""
    vals = sorted(seconds)
    out: dict[str, float | None] = {
        f"mean_{name}_ms": mean(vals) * 1000.0,
        f"median_{name}_ms": percentile(vals, 50) * 1000.0,
        f"std_{name}_ms": std(vals) * 1000.0,
    }
    for p in pcts:
        word = str(int(p)) if int(p) == p else str(p)
        out[f"p{word}_{name}_ms"] = percentile(vals, p) * 1000.0
    if empty_none and not vals:
        return dict.fromkeys(out)
    return out
