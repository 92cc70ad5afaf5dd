"""The one explicit registry of policies: kind -> factory.

A factory validates its own params (raising :class:`~slorouter.policy.base.ParamError`
with every problem) and returns a ready policy. Add a policy by adding a line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slorouter.policy import polyserve, simple, slo_pack, static_partition, tempo
from slorouter.policy.base import Policy, PolicyContext, PolicyFactory

REGISTRY: Mapping[str, PolicyFactory] = {
    "round-robin": simple.make_round_robin,
    "random": simple.make_random,
    "least-request": simple.make_least_request,
    "least-tokens": simple.make_least_tokens,
    "power-of-two": simple.make_power_of_two,
    "static-partition": static_partition.make_static_partition,
    "slo-pack": slo_pack.make_slo_pack,
    "polyserve": polyserve.make_polyserve,
    "tempo": tempo.make_tempo,
}


def kinds() -> list[str]:
    return list(REGISTRY)


def build(kind: str, params: Mapping[str, Any], ctx: PolicyContext) -> Policy:
    """Build a policy; ``KeyError`` for an unknown kind, ``ParamError`` for bad params."""
    return REGISTRY[kind](params, ctx)
