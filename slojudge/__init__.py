"""slojudge — did a unit of work meet its SLO, and what service gain did it deliver.

One definition (docs/loadgen.md, "Metric definitions"), as pure functions of plain
numbers, shared by the router (``slorouter``: per finished request, on ``/metrics``), the
offline simulator (``slorouter.fleetsim``: its summary and JSON) and the load generator
(``loadgen``: its report). The load generator is a client and never imports the router,
so the judge lives in neither: it is a package of its own that imports nothing outside
the standard library (import-linter contracts in ``pyproject.toml``).

* :mod:`slojudge.tokens` — per-token deadlines: which output tokens arrived on schedule;
* :mod:`slojudge.gain` — token value, the verdict and service gain of a request or workflow;
* :mod:`slojudge.workflows` — a workflow's gain when its calls are seen one at a time;
* :mod:`slojudge.shapes` — a workflow's call graph (chain, fan-out): which call waits for which.
"""

from slojudge.gain import CLASSES, DECODE_WEIGHT, PREFILL_WEIGHT, Call, Verdict, in_time, judge, value
from slojudge.tokens import (
    EPS,
    TokenCheck,
    check_chunks,
    cumulative_tokens,
    first_on_time_index,
    on_time,
    on_time_in_chunk,
)
from slojudge.workflows import WorkflowLedger

__all__ = [
    "CLASSES",
    "DECODE_WEIGHT",
    "EPS",
    "PREFILL_WEIGHT",
    "Call",
    "TokenCheck",
    "Verdict",
    "WorkflowLedger",
    "check_chunks",
    "cumulative_tokens",
    "first_on_time_index",
    "in_time",
    "judge",
    "on_time",
    "on_time_in_chunk",
    "value",
]
