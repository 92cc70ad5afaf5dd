"""Token-length distributions for prompts and outputs.

YAML forms (all take optional ``min`` and ``max`` caps, applied after sampling;
``min`` defaults to 1)::

    {dist: fixed, value: 128}
    {dist: uniform, min: 64, max: 256}            # integers, both ends included
    {dist: lognormal, mean: 200, sd: 150, max: 4096}   # mean/sd of the lengths themselves
    {dist: trace}                                  # the replayed trace row's length (trace arrivals)
    {dist: trace, path: traces/splitwise_conv.csv} # an empirical sample from a trace file

A bare integer is shorthand for ``{dist: fixed, value: N}``.
For a lognormal with mean ``m`` and standard deviation ``s``:
``sigma² = ln(1 + s²/m²)``, ``mu = ln(m) − sigma²/2``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from loadgen.yamlcheck import Node

DISTS = ("fixed", "uniform", "lognormal", "trace")


@dataclass(frozen=True, slots=True)
class LengthSpec:
    dist: str
    value: int = 0
    mean: float = 0.0
    sd: float = 0.0
    lo: int = 1
    hi: int | None = None
    trace_path: str | None = None  # for dist=trace with an explicit file
    values: tuple[int, ...] = ()  # filled for dist=trace with a file

    @property
    def from_row(self) -> bool:
        """True when the length comes from the replayed trace row."""
        return self.dist == "trace" and self.trace_path is None

    def clamp(self, n: int) -> int:
        n = max(self.lo, n)
        return min(self.hi, n) if self.hi is not None else n

    def sample(self, rng: random.Random, row_value: int | None = None) -> int:
        """One length. ``row_value`` is the trace row's length (used when ``from_row``)."""
        if self.dist == "fixed":
            return self.clamp(self.value)
        if self.dist == "uniform":
            return self.clamp(rng.randint(self.lo, self.hi or self.lo))
        if self.dist == "lognormal":
            sigma2 = math.log(1.0 + (self.sd / self.mean) ** 2)
            mu = math.log(self.mean) - sigma2 / 2.0
            return self.clamp(round(rng.lognormvariate(mu, math.sqrt(sigma2))))
        if self.values:
            return self.clamp(self.values[rng.randrange(len(self.values))])
        if row_value is None:
            raise ValueError("a {dist: trace} length without a path needs trace arrivals")
        return self.clamp(row_value)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"dist": self.dist, "min": self.lo, "max": self.hi}
        if self.dist == "fixed":
            out["value"] = self.value
        elif self.dist == "lognormal":
            out |= {"mean": self.mean, "sd": self.sd}
        elif self.trace_path:
            out["path"] = self.trace_path
        return out


def parse_length(parent: Node, key: str, default: int) -> LengthSpec:
    raw = parent.data.get(key)
    if raw is None:
        return LengthSpec("fixed", value=default)
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise parent.fail(key, f"must be >= 1, got {raw}")
        return LengthSpec("fixed", value=raw)
    node = parent.node(key)
    node.check_keys({"dist", "value", "mean", "sd", "min", "max", "path"})
    dist = node.str_("dist", choices=DISTS)
    lo = node.int_("min", 1, ge=1)
    hi = node.opt_int("max", ge=1)
    if hi is not None and hi < lo:
        raise node.fail("max", f"must be >= min ({lo}), got {hi}")
    if dist == "fixed":
        return LengthSpec(dist, value=node.int_("value", ge=1), lo=lo, hi=hi)
    if dist == "uniform":
        if hi is None:
            raise node.fail("max", "is required for a uniform length")
        return LengthSpec(dist, lo=lo, hi=hi)
    if dist == "lognormal":
        mean = node.num("mean", gt=0)
        return LengthSpec(dist, mean=mean, sd=node.num("sd", gt=0), lo=lo, hi=hi)
    return LengthSpec(dist, lo=lo, hi=hi, trace_path=node.opt_str("path"))
