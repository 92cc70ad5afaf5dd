"""Layer 0: immutable value types shared by every layer.

Time is always seconds on the injected clock's scale; token counts are ints.

* :class:`Slo` / :class:`Tier` — the SLO model (docs/loadgen.md, "Metric definitions",
  used by the router, the simulator and the load generator alike). Output token ``i``
  (first token ``i = 0``) of a request arriving at ``t`` must arrive by
  ``t + ttft_s + i * tpot_s`` (the per-token deadline, DSLO).
* :class:`RequestInfo` — what the router knows of a request when deciding.
* :class:`Decision` — what a policy returns: :class:`Dispatch` (a *ranked* list of
  backends, best first, so the dispatcher can fail over without asking again),
  :class:`Defer` (wait in the router queue) or :class:`Reject` (answer now with an
  HTTP status).
* :class:`Outcome` — how a request ended; produced exactly once per request.
* :class:`Scope` — where a policy may serve a request, for the admission core's
  overload judgement (docs/policies.md §9).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class SloClass(StrEnum):
    LATENCY = "latency"  # TTFT + TPOT (streaming chat)
    DEADLINE = "deadline"  # the whole response by deadline_ms
    WORKFLOW = "workflow"  # calls sharing a workflow id; the last must finish by the deadline
    BEST_EFFORT = "best_effort"  # no SLO; served with what is left


class WhenLate(StrEnum):
    """What the router does with a request of a tier once its SLO can no longer be met
    (docs/policies.md §9)."""

    REJECT = "reject"  # answer 429 with Retry-After (the predicted drain time) at once
    BEST_EFFORT = "best_effort"  # serve it late, on room no request with an SLO needs


class Engine(StrEnum):
    VLLM = "vllm"
    TGI = "tgi"
    OPENAI = "openai"


class Tightness(NamedTuple):
    """How tight an SLO is, as a sort key (smaller is tighter): TPOT-bound SLOs first, by
    TPOT; then deadline SLOs, by deadline; best effort last. A tuple, so comparing,
    hashing and sorting are the tuple's (and cheap)."""

    kind: int  # PACED | DEADLINE | LOOSE
    value: float  # the TPOT (PACED) or the deadline (DEADLINE), in seconds; 0 for LOOSE

    @property
    def paced(self) -> bool:
        """A per-token pace bounds the servers of this tightness."""
        return self.kind == PACED

    @property
    def tpot(self) -> float:
        """The TPOT a server of this tightness must keep (``inf``: none)."""
        return self.value if self.kind == PACED else math.inf


PACED, DEADLINE, LOOSE = 0, 1, 2  # Tightness.kind, tightest first
LOOSEST = Tightness(LOOSE, 0.0)  # best effort, and servers of no known tier


@dataclass(frozen=True, slots=True)
class Slo:
    """The numbers of one SLO. ``None`` means "no bound of this kind"."""

    slo_class: SloClass
    ttft_s: float | None = None
    tpot_s: float | None = None
    deadline_s: float | None = None  # relative to arrival (deadline and workflow classes)

    def token_deadline(self, arrival: float, i: int) -> float:
        """Latest arrival time of output token ``i`` (0-based); ``inf`` when unbounded."""
        if self.ttft_s is None:
            return math.inf
        return arrival + self.ttft_s + i * (self.tpot_s or 0.0)

    @property
    def tightness(self) -> Tightness:
        """Sort key: smaller is tighter. TPOT first, then deadline, best effort last."""
        if self.tpot_s is not None:
            return Tightness(PACED, self.tpot_s)
        if self.deadline_s is not None:
            return Tightness(DEADLINE, self.deadline_s)
        return LOOSEST


@dataclass(frozen=True, slots=True)
class Tier:
    """A named SLO declared in the config, with its weight (price) and rank.

    ``rank`` orders tiers by tightness: 0 is the tightest. Ties keep config order.
    ``when_late``: what happens to a request of this tier that can no longer meet its
    SLO (a best-effort tier is never late).
    """

    name: str
    slo: Slo
    weight: float = 1.0
    rank: int = 0
    when_late: WhenLate = WhenLate.REJECT

    @property
    def rejects_late(self) -> bool:
        """A request of this tier is answered 429 once its SLO can no longer be met."""
        return self.when_late is WhenLate.REJECT and self.slo.slo_class is not SloClass.BEST_EFFORT


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the router knows of one request when it decides.

    ``prompt_tokens`` is an estimate until the engine reports ``usage``.
    ``output_bound`` is the predicted upper bound on output tokens (a quantile of the
    length model, capped by ``max_tokens``).
    ``deadline_at`` is absolute (clock time) for deadline/workflow classes, else None
    (a workflow call carries its workflow's deadline; ``target_at`` its own stage budget).
    """

    rid: int
    tier: Tier
    arrival: float
    prompt_tokens: int
    max_tokens: int | None
    output_bound: int
    model: str = ""
    stream: bool = True
    workflow_id: str | None = None
    deadline_at: float | None = None
    key_id: str | None = None  # a stable, non-secret id of the API key (never the key)
    engines: frozenset[Engine] | None = None  # engines whose API the request speaks (None: any)
    # a workflow call's own deadline (its stage budget, slorouter.models.workflows): what
    # the router schedules it for; the workflow is still judged by ``deadline_at``
    target_at: float | None = None
    # stages left on the workflow's longest path, this call's included (1: not a workflow
    # call, or no basis): the admission queue's gain density (slorouter.admission.gain)
    path_stages: int = 1

    @property
    def due_at(self) -> float | None:
        """The deadline to schedule for: the call's stage budget when it has one, else
        ``deadline_at`` (None: no deadline)."""
        return self.deadline_at if self.target_at is None else self.target_at

    @property
    def ttft_deadline(self) -> float:
        """Absolute time by which the first token is due (``inf`` if unbounded)."""
        return self.tier.slo.token_deadline(self.arrival, 0)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send the request to ``backends[0]``; on failure before the first byte, the next."""

    backends: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Defer:
    """Keep the request in the router queue; decide again on the next wake-up.

    ``retry_at`` is a hint: the latest clock time at which deciding again is useful
    even if nothing else happens (e.g. when the TTFT deadline will have passed).
    """

    reason: str
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer now with ``status`` (e.g. 429 with ``Retry-After``, 503)."""

    status: int
    reason: str
    retry_after_s: float | None = None


Decision = Dispatch | Defer | Reject


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a policy may serve a request, as the admission core needs it to judge
    overload (docs/policies.md §9). A policy that sends any request to any server has
    one scope, the fleet (``home`` None); ``polyserve`` has one per bin.

    ``home``: the group of servers where the request comes first (polyserve: its
    tier's bin) — requests of one home compete for the same room, so the queue orders
    them together and judges their overload together. ``reach``: the homes whose
    servers it may use, its own first (polyserve: its bin and the tighter ones it may
    overflow into); the work queued in them is what may go before it. ``servers``: how
    many servers those are (its share of the fleet's service rate)."""

    home: Hashable
    reach: tuple[Hashable, ...]
    servers: int


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"  # upstream failure (connect, 5xx, broken stream)
    CANCELLED = "cancelled"  # client went away
    REJECTED = "rejected"  # the router answered 4xx/5xx itself (429 late, 503 no backend)
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended. Produced exactly once per request by the tracker."""

    rid: int
    tier: str
    backend: str | None
    status: Status
    arrival: float
    finished_at: float
    prompt_tokens: int
    output_tokens: int
    dispatched_at: float | None = None
    first_token_at: float | None = None
    # (running, kv_tokens, prefill backlog tokens) of the backend when the request was
    # placed on it; None when it was moved after a failure (its TTFT spans two servers)
    dispatch_load: tuple[int, int, int] | None = None
    # max over tokens of (arrival time - per-token deadline); <= 0 means DSLO met.
    max_lateness_s: float | None = None
    # (gap_s, running_requests, kv_tokens) per observed decode step on the backend,
    # for the latency model; gaps of chunks carrying k tokens are split into k steps.
    step_samples: tuple[tuple[float, int, int], ...] = field(default=(), repr=False)
    model: str = ""
    key_id: str | None = None
    # output tokens that arrived by their per-token deadline (slojudge.tokens; tiers with a TTFT)
    on_time_tokens: int = 0
    # the request as the router knew it (tier, weight, deadline_at, workflow id): what
    # slorouter.judge needs for the SLO verdict and service gain
    request: RequestInfo | None = field(default=None, repr=False)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival

    @property
    def mean_tpot_s(self) -> float | None:
        """``(latency - ttft) / (n_out - 1)``, as ``vllm bench serve`` defines it."""
        if self.first_token_at is None or self.output_tokens < 2:
            return None
        return (self.finished_at - self.first_token_at) / (self.output_tokens - 1)
