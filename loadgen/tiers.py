"""Tier definitions as the load generator sees them (docs/loadgen.md, "Workload files").

A tier is a named SLO: a class and its numbers. The load generator reads them from
the router's YAML (only its ``tiers:`` list, each entry with ``name``, ``class``,
``ttft_ms``, ``tpot_ms``, ``deadline_ms``, ``weight``; other keys are ignored) or
from the workload file itself (same keys). It never imports the router.

Classes and what "meets its SLO" means for one unit of work (a request, or a whole
workflow for the ``workflow`` class):

* ``latency``: every output token ``i`` (0-based) arrives by
  ``send + ttft_ms + i * tpot_ms`` (the per-token deadline, DSLO).
* ``deadline``: the whole response by ``send + deadline_ms``.
* ``workflow``: every call succeeds and the last call finishes by
  ``first send + deadline_ms``.
* ``best_effort``: no SLO; it "attains" when it completes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loadgen.yamlcheck import Node, read_yaml

CLASSES = ("latency", "deadline", "workflow", "best_effort")


@dataclass(frozen=True, slots=True)
class TierSpec:
    name: str
    slo_class: str  # one of CLASSES
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    deadline_ms: float | None = None
    weight: float = 1.0

    @property
    def has_slo(self) -> bool:
        return self.slo_class != "best_effort"

    def describe(self) -> str:
        """Short human form, e.g. ``latency TTFT 500 ms / TPOT 50 ms``."""
        parts = [self.slo_class]
        if self.ttft_ms is not None:
            parts.append(f"TTFT {self.ttft_ms:g} ms")
        if self.tpot_ms is not None:
            parts.append(f"TPOT {self.tpot_ms:g} ms")
        if self.deadline_ms is not None:
            parts.append(f"deadline {self.deadline_ms:g} ms")
        return " ".join(parts[:1]) + (" " + " / ".join(parts[1:]) if len(parts) > 1 else "")

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "class": self.slo_class,
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "deadline_ms": self.deadline_ms,
            "weight": self.weight,
        }

    @staticmethod
    def from_json(data: dict[str, object]) -> TierSpec:
        return parse_tier(Node("(saved results)", "tier", data), strict=False)


def parse_tier(node: Node, *, strict: bool) -> TierSpec:
    """One tier entry. ``strict`` rejects unknown keys (inline tiers in a workload)."""
    if strict:
        node.check_keys({"name", "class", "ttft_ms", "tpot_ms", "deadline_ms", "weight"})
    cls = node.str_("class", default="latency", choices=CLASSES)
    tier = TierSpec(
        name=node.str_("name"),
        slo_class=cls,
        ttft_ms=node.opt_num("ttft_ms", gt=0),
        tpot_ms=node.opt_num("tpot_ms", gt=0),
        deadline_ms=node.opt_num("deadline_ms", gt=0),
        weight=node.num("weight", 1.0, ge=0),
    )
    if cls == "latency" and tier.ttft_ms is None:
        raise node.fail("ttft_ms", "is required for a latency tier")
    if cls == "latency" and tier.tpot_ms is None:
        raise node.fail("tpot_ms", "is required for a latency tier")
    if cls in ("deadline", "workflow") and tier.deadline_ms is None:
        raise node.fail("deadline_ms", f"is required for a {cls} tier")
    return tier


def parse_tiers(nodes: list[Node], *, strict: bool) -> dict[str, TierSpec]:
    tiers: dict[str, TierSpec] = {}
    for node in nodes:
        tier = parse_tier(node, strict=strict)
        if tier.name in tiers:
            raise node.fail("name", f"duplicate tier name {tier.name!r}")
        tiers[tier.name] = tier
    return tiers


def load_router_tiers(path: Path) -> dict[str, TierSpec]:
    """The ``tiers:`` list of a router YAML file (everything else is ignored)."""
    data = read_yaml(path, "the router config")
    return parse_tiers(Node(str(path), "", data).nodes("tiers"), strict=False)
