"""The load of one backend as policies see it: aggregates, never per-request objects.

A :class:`BackendLoad` holds counters summed over the requests resident on a backend
(running requests, prompt/output tokens held, future-peak KV, the prefill backlog,
residents per tier) and a small fixed-size :attr:`BackendLoad.slack` summary of the
newest decoding residents' schedules. Everything in it is a number or a tuple of
numbers, so a load can be published, copied and **summed** (:meth:`BackendLoad.merge`)
— the routing truth of several router processes is the sum of what each one holds.

Written only by :class:`~slorouter.state.tracker.Tracker` (which keeps the per-request
records private); read by policies through a :class:`~slorouter.state.snapshot.Snapshot`.
Policies may not import the tracker (an import-linter contract says so).

Slack summary
-------------
Of the newest :data:`SLACK_WINDOW` residents (in placement order, newest first), each
that has produced a token and has a TTFT and a TPOT gives a :data:`SlackEntry`
``(due0, tokens, last_token_at, tpot)``: ``due0`` = arrival + TTFT (the first token's
deadline), ``tokens`` the output tokens seen, ``last_token_at`` when the last one came.
If the server keeps producing a token every ``pace`` seconds, ``made = (now − last) /
pace`` more tokens have come by ``now`` and the resident's slack is the next token's
deadline ``due0 + (tokens − 1 + made) · tpot`` minus its time ``last + made · pace``
(:func:`slack_now`). (Older residents have had time to bank slack: the server's pace is
kept under their TPOT, so the newest ones bound the server's slack.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

SLACK_WINDOW: Final = 8  # newest residents summarised in BackendLoad.slack
SlackEntry = tuple[float, int, float, float]  # (arrival + TTFT, tokens seen, last token time, tpot)


def slack_now(entry: SlackEntry, now: float, pace: float) -> float:
    """A resident's slack at ``now`` when the server runs a step every ``pace`` seconds
    (see module docs)."""
    due0, tokens, last, tpot = entry
    made = (now - last) / pace if pace > 0 else 0.0
    return due0 + (tokens - 1 + made) * tpot - (last + made * pace)


def banked(entry: SlackEntry) -> float:
    """The slack a resident had when its last token arrived."""
    due0, tokens, last, tpot = entry
    return due0 + (tokens - 1) * tpot - last


class BackendLoad:
    """Counters of one backend (see module docs)."""

    __slots__ = (
        "_slack",
        "_slack_fn",
        "ahead",
        "backend_id",
        "output_tokens",
        "peak_kv",
        "phantom",
        "prefill_tokens",
        "prefilling",
        "prompt_tokens",
        "remote_slack",
        "running",
        "tier_counts",
    )

    def __init__(self, backend_id: str) -> None:
        self.backend_id = backend_id
        self.running = 0  # resident requests
        self.prompt_tokens = 0  # Σ prompt tokens of resident requests
        self.output_tokens = 0  # Σ output tokens generated so far by resident requests
        self.peak_kv = 0  # Σ (prompt + predicted total output): the KV held when all peak
        self.prefilling = 0  # residents still waiting for their first token
        self.prefill_tokens = 0  # Σ prompt tokens of those
        self.tier_counts: dict[str, int] = {}
        self._slack: tuple[SlackEntry, ...] = ()
        # set by the writer when the summary is stale: recomputes it on the next read
        self._slack_fn: Callable[[], tuple[SlackEntry, ...]] | None = None
        # other router processes' summaries of this backend (slorouter.state.sync)
        self.remote_slack: tuple[SlackEntry, ...] = ()
        # the herding guard (slorouter.state.sync): what the other router processes may
        # place here before this one's next update, ahead of its own next placement —
        # (requests, their prompt tokens, their peak KV); zero when alone or quota off
        self.ahead: tuple[float, float, float] = (0.0, 0.0, 0.0)
        # the part of the counters above that is the herding guard's phantom (requests
        # other processes are expected to place, not yet seen: slorouter.state.sync) —
        # (running, KV tokens, prefill tokens); not running sequences, so the latency
        # model's labels (the load a step or a first token ran at) leave it out
        self.phantom: tuple[int, int, int] = (0, 0, 0)

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def own_slack(self) -> tuple[SlackEntry, ...]:
        """The summary of the residents this process placed (newest first)."""
        fn = self._slack_fn
        if fn is not None:
            self._slack = fn()
            self._slack_fn = None
        return self._slack

    @property
    def slack(self) -> tuple[SlackEntry, ...]:
        """The newest decoding residents' schedules (at most :data:`SLACK_WINDOW`):
        this process's, newest first; with other processes' summaries, the entries
        with the least banked slack among both."""
        own = self.own_slack
        if not self.remote_slack:
            return own
        return tuple(sorted(own + self.remote_slack, key=banked)[:SLACK_WINDOW])

    def mark_slack(self, fn: Callable[[], tuple[SlackEntry, ...]]) -> None:
        """Writer side: the summary changed; ``fn`` recomputes it when next read
        (a token costs one store, not a recomputation)."""
        self._slack_fn = fn

    def set_slack(self, entries: tuple[SlackEntry, ...]) -> None:
        self._slack = entries
        self._slack_fn = None

    def min_slack(self, now: float, pace: float, floor: float = -math.inf) -> float:
        """Smallest slack among :attr:`slack` at ``now`` and ``pace`` (``inf`` if none),
        newest resident first; stops at the first one below ``floor``."""
        best = math.inf
        for e in self.slack:
            s = slack_now(e, now, pace)
            if s < best:
                best = s
                if best < floor:
                    return best
        return best

    def tightest_tpot(self, tpot_of: Callable[[str], float | None]) -> float:
        """The smallest TPOT among resident requests' tiers (``inf`` if none)."""
        best = math.inf
        for tier, n in self.tier_counts.items():
            if n:
                t = tpot_of(tier)
                if t is not None and t < best:
                    best = t
        return best

    def is_zero(self) -> bool:
        return (
            self.running == 0
            and self.prompt_tokens == 0
            and self.output_tokens == 0
            and self.peak_kv == 0
            and self.prefilling == 0
            and self.prefill_tokens == 0
            and not any(self.tier_counts.values())
            and not self.own_slack
        )

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        """The scalar counters (running, prompt, output, peak KV, prefilling, prefill tokens)."""
        return (
            self.running,
            self.prompt_tokens,
            self.output_tokens,
            self.peak_kv,
            self.prefilling,
            self.prefill_tokens,
        )

    @classmethod
    def merge(cls, backend_id: str, parts: Iterable[BackendLoad]) -> BackendLoad:
        """The sum of several holders' loads of one backend (e.g. one per router
        process): counters and tier counts add; the slack summary keeps the
        :data:`SLACK_WINDOW` entries with the least banked slack (least first)."""
        out = cls(backend_id)
        entries: list[SlackEntry] = []
        for p in parts:
            out.running += p.running
            out.prompt_tokens += p.prompt_tokens
            out.output_tokens += p.output_tokens
            out.peak_kv += p.peak_kv
            out.prefilling += p.prefilling
            out.prefill_tokens += p.prefill_tokens
            for t, n in p.tier_counts.items():
                if n:
                    out.tier_counts[t] = out.tier_counts.get(t, 0) + n
            entries.extend(p.slack)
        entries.sort(key=banked)
        out._slack = tuple(entries[:SLACK_WINDOW])
        return out

    def __repr__(self) -> str:
        return (
            f"BackendLoad({self.backend_id!r}, running={self.running}, kv={self.kv_tokens}, "
            f"peak_kv={self.peak_kv}, prefill={self.prefilling}/{self.prefill_tokens}, "
            f"tiers={self.tier_counts})"
        )
