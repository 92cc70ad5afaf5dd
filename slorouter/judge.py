"""The router's side of :mod:`slojudge`: the SLO verdict and service gain of one finished
request, from its :class:`~slorouter.values.Outcome`.

The tracker counts the output tokens that arrived by their per-token deadline as chunks
stream (``Outcome.on_time_tokens``, the predicate of :mod:`slojudge.tokens`, from the
request's arrival at the router) and attaches the request (tier, weight, ``deadline_at``
as the router resolved it — a workflow call carries its workflow's deadline). A
workflow call is judged on its own here (ok and finished by the workflow's deadline);
:class:`slojudge.WorkflowLedger` turns those into the workflow's gain.
"""

from __future__ import annotations

import slojudge
from slorouter.values import Outcome, Status


def verdict(o: Outcome) -> slojudge.Verdict | None:
    """The verdict of one finished request (None: the outcome carries no request)."""
    req = o.request
    if req is None:
        return None
    slo = req.tier.slo
    first_ok = False
    if slo.ttft_s is not None and o.first_token_at is not None:
        first_ok = slojudge.on_time(o.first_token_at - req.ttft_deadline, slo.tpot_s or 0.0, 0)
    call = slojudge.Call(
        ok=o.status is Status.OK,
        prompt_tokens=o.prompt_tokens,
        output_tokens=o.output_tokens,
        finished_at=o.finished_at,
        on_time_tokens=o.on_time_tokens,
        first_on_time=first_ok,
        planned_output=req.max_tokens or 0,
    )
    due = req.deadline_at
    if due is None and slo.deadline_s is not None:  # a request built without it (e.g. by a test)
        due = req.arrival + slo.deadline_s
    return slojudge.judge(slo.slo_class.value, req.tier.weight, [call], due)
