"""The SLO verdict and the service gain of one unit of work (after Tempo;
docs/loadgen.md, "Metric definitions", and docs/metrics.md, "Service gain").

A unit is a request (one call) or, for the ``workflow`` class, a whole workflow (its
calls). Inputs are plain facts — token counts, times, the on-time count from
:mod:`slojudge.tokens` — so the router (an ``Outcome``), the simulator (its records) and
the load generator (its call records) all feed the same function.

**Token value.** A prompt (prefill) token is worth ``PREFILL_WEIGHT`` and an output
(decode) token ``DECODE_WEIGHT``; ``value(p, o) = PREFILL_WEIGHT·p + DECODE_WEIGHT·o``,
times the tier's ``weight``. The 1 : 8 ratio is JITServe's (Tempo's public code weighs
its request phases prefill 1, decode 8; an earlier version used 2): a decode token holds
a batch slot for a whole memory-bound step, a prefill token is a sliver of one
compute-bound pass, and providers price output tokens several times input ones.

**Gain by class** (× tier weight). Tempo scales late work down smoothly; this judge
counts it or not, per token for streams and per unit otherwise:

* ``latency``: the prompt's value when the first token was on time, plus
  ``DECODE_WEIGHT`` per output token that arrived on schedule. Met: ``ok``, at least one
  token, every token on schedule, and — if the tier also has a deadline — finished by it.
* ``deadline``: ``value(prompt, output)`` when ``ok`` and finished by the deadline.
* ``workflow``: the sum of its calls' values when every call is ``ok`` and the last one
  finished by the workflow's deadline (a router that sees one call at a time uses
  :class:`slojudge.workflows.WorkflowLedger`).
* ``best_effort``: ``value(prompt, output)`` when ``ok`` (completed). It has no SLO;
  ``met`` means completed.

``gain_max`` is the gain had everything been on time: the values of all calls, a failed
call counted at ``max(output, planned_output)`` (what it was asked to produce).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slojudge.tokens import EPS

PREFILL_WEIGHT = 1.0
DECODE_WEIGHT = 8.0
CLASSES = ("latency", "deadline", "workflow", "best_effort")


def value(prompt_tokens: int, output_tokens: int) -> float:
    """The worth of a prompt and an output, before the tier weight."""
    return PREFILL_WEIGHT * max(prompt_tokens, 0) + DECODE_WEIGHT * max(output_tokens, 0)


def in_time(finished_at: float | None, due_at: float) -> bool:
    """Finished by an absolute deadline."""
    return finished_at is not None and finished_at <= due_at + EPS


@dataclass(frozen=True, slots=True)
class Call:
    """What happened to one call (times on any one clock, shared with ``due_at``)."""

    ok: bool  # completed normally (not failed, rejected, cancelled or timed out)
    prompt_tokens: int
    output_tokens: int
    finished_at: float | None = None  # its last token (streams) or body; None: never
    on_time_tokens: int = 0  # latency: output tokens on schedule (slojudge.tokens)
    first_on_time: bool = False  # latency: the first token was on schedule (TTFT met)
    planned_output: int = 0  # what it was asked to produce (e.g. max_tokens), for gain_max


@dataclass(frozen=True, slots=True)
class Verdict:
    met: bool  # the unit meets its tier's SLO (best effort: completed)
    gain: float  # service gain, × tier weight
    gain_max: float  # the gain had everything been on time
    tokens_met: bool | None = None  # latency: every output token on schedule
    deadline_met: bool | None = None  # when a deadline applies: ok and finished by it


def judge(slo_class: str, weight: float, calls: Sequence[Call], due_at: float | None = None) -> Verdict:
    """The verdict of one unit of ``slo_class`` (see the module doc). ``due_at`` is the
    absolute deadline (start + deadline) for deadline and workflow units, and for
    latency units whose tier has a deadline too; None otherwise."""
    if slo_class not in CLASSES:
        raise ValueError(f"unknown SLO class {slo_class!r} (one of {', '.join(CLASSES)})")
    if not calls:
        raise ValueError("a unit has at least one call")
    gain_max = weight * sum(
        value(c.prompt_tokens, c.output_tokens if c.ok else max(c.output_tokens, c.planned_output))
        for c in calls
    )
    if slo_class == "latency":
        if len(calls) != 1:
            raise ValueError("a latency unit is one call")
        c = calls[0]
        tokens_met = c.ok and c.output_tokens > 0 and c.on_time_tokens >= c.output_tokens
        dl = None if due_at is None else c.ok and in_time(c.finished_at, due_at)
        on_time = min(max(c.on_time_tokens, 0), max(c.output_tokens, 0))
        gain = weight * (
            (PREFILL_WEIGHT * max(c.prompt_tokens, 0) if c.first_on_time else 0.0) + DECODE_WEIGHT * on_time
        )
        return Verdict(tokens_met and dl is not False, gain, gain_max, tokens_met, dl)
    ok = all(c.ok for c in calls)
    full = weight * sum(value(c.prompt_tokens, c.output_tokens) for c in calls)
    if slo_class == "best_effort":
        return Verdict(ok, full if ok else 0.0, gain_max)
    if due_at is None:
        raise ValueError(f"a {slo_class} unit needs its deadline (due_at)")
    met = ok and all(in_time(c.finished_at, due_at) for c in calls)
    return Verdict(met, full if met else 0.0, gain_max, None, met)
