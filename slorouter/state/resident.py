"""The tracker's record of one request (:mod:`slorouter.state.tracker`, its only user:
policies read :class:`~slorouter.state.load.BackendLoad` aggregates, never these — an
import-linter contract keeps it so)."""

from __future__ import annotations

import math

from slorouter.values import RequestInfo


class Resident:
    """One request known to the router (queued, or resident on ``backend``)."""

    __slots__ = (
        "at_dispatch",
        "backend",
        "bound",
        "dispatched_at",
        "first_token_at",
        "last_token_at",
        "max_lateness",
        "on_time",
        "output_tokens",
        "prompt_tokens",
        "req",
        "samples",
    )

    def __init__(self, req: RequestInfo) -> None:
        self.req = req
        self.backend: str | None = None
        self.prompt_tokens = req.prompt_tokens
        self.output_tokens = 0
        self.bound = max(1, req.output_bound)
        self.dispatched_at: float | None = None
        self.at_dispatch: tuple[int, int, int] | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.max_lateness = -math.inf
        self.on_time = 0  # output tokens on schedule (slojudge.tokens)
        self.samples: list[tuple[float, int, int]] = []
