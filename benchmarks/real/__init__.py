"""The router in front of real vLLM servers (``scripts/bench_real_policies.py``; the e2e tests
``tests/e2e/test_router_real_model.py`` and ``test_overload_real.py`` call the same
functions through this package):

================  ======================================================================
``streams``       closed-loop streams through the load generator's client; vLLM's own ITL
``harness``       the real router in this process, collecting every request's outcome
``levels``        router overhead vs direct; the router's latency model vs vLLM's ITL
``compare``       SLO tiers and users from the measured curve; polyserve vs round-robin
``bench``         the command: sections, JSON and tables
================  ======================================================================
"""

from benchmarks.real.compare import (
    REQUEST_TIMEOUT_S,
    VARIANTS,
    choose_users,
    compare_policies,
    itl_curve,
    met,
    run_policy,
    single_stream,
    slo_tiers,
    totals,
)
from benchmarks.real.harness import Router, config, router
from benchmarks.real.levels import model_levels, overhead, profile_servers, profile_summary, unsteady
from benchmarks.real.streams import MODEL, WORDS, Record, closed_loop, itl_between, stream_one, vllm_itl

__all__ = [
    "MODEL",
    "REQUEST_TIMEOUT_S",
    "VARIANTS",
    "WORDS",
    "Record",
    "Router",
    "choose_users",
    "closed_loop",
    "compare_policies",
    "config",
    "itl_between",
    "itl_curve",
    "met",
    "model_levels",
    "overhead",
    "profile_servers",
    "profile_summary",
    "router",
    "run_policy",
    "single_stream",
    "slo_tiers",
    "stream_one",
    "totals",
    "unsteady",
    "vllm_itl",
]
