"""Layer 3: routing policies. Pure, synchronous, no I/O, clock injected.

Every policy implements ``select(request, snapshot) -> Decision`` (see
:mod:`slorouter.policy.base`) and is listed in :mod:`slorouter.policy.registry`.
"""
