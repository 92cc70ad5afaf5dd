"""Per-request records: what the load generator saw, and nothing computed from it.

Times are seconds from the start of the run (``time.perf_counter`` based).

``chunks`` holds the arrival time of every streamed chunk that carries ``choices``
(what ``vllm bench serve`` times), in order. When the first of them is a role-only
chunk (OpenAI chat: ``{"delta": {"role": "assistant", "content": ""}}``), ``lead`` is 1:
it counts for vLLM's TTFT and ITL lists but carries no token. The token-bearing chunks
are ``chunks[lead:]``. A non-streaming response is one chunk at the time its body was
fully read.

Status: ``ok``; ``rejected`` (HTTP 429); ``error`` (other HTTP error, broken or empty
stream, connection failure); ``timeout`` (the per-request timeout passed);
``cancelled`` (the run ended first, or a workflow predecessor failed so it was never sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "rejected", "error", "timeout", "cancelled")


@dataclass(slots=True)
class CallRecord:
    rid: int
    unit: int  # the unit of work (a request, or the workflow this call belongs to)
    call: int  # index within the workflow (0 for a plain request)
    tier: str
    stream: bool
    prompt_tokens: int  # planned (what the prompt was synthesized for)
    max_tokens: int
    sched: float  # when it was due: its arrival, or when its workflow predecessors finished
    workflow_id: str | None = None
    sent: float | None = None  # None: never sent
    chunks: list[float] = field(default_factory=list)
    lead: int = 0
    end: float | None = None  # last chunk (vLLM's latency end), or body complete
    done: float | None = None  # response fully read (what workflow successors wait for)
    status: str = "pending"
    http_status: int | None = None
    error: str = ""
    usage_prompt: int | None = None
    usage_completion: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def token_chunks(self) -> list[float]:
        return self.chunks[self.lead :] if self.lead else self.chunks

    @property
    def output_tokens(self) -> int:
        """Usage's completion tokens when the server sent them, else one per token chunk."""
        if self.usage_completion is not None:
            return self.usage_completion
        return len(self.chunks) - self.lead

    @property
    def input_tokens(self) -> int:
        return self.usage_prompt if self.usage_prompt is not None else self.prompt_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "rid": self.rid,
            "unit": self.unit,
            "call": self.call,
            "tier": self.tier,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "sched": round(self.sched, 6),
            "workflow_id": self.workflow_id,
            "sent": None if self.sent is None else round(self.sent, 6),
            "chunks": [round(t, 6) for t in self.chunks],
            "lead": self.lead,
            "end": None if self.end is None else round(self.end, 6),
            "done": None if self.done is None else round(self.done, 6),
            "status": self.status,
            "http_status": self.http_status,
            "error": self.error,
            "usage_prompt": self.usage_prompt,
            "usage_completion": self.usage_completion,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> CallRecord:
        return CallRecord(
            rid=int(d["rid"]),
            unit=int(d["unit"]),
            call=int(d["call"]),
            tier=str(d["tier"]),
            stream=bool(d["stream"]),
            prompt_tokens=int(d["prompt_tokens"]),
            max_tokens=int(d["max_tokens"]),
            sched=float(d["sched"]),
            workflow_id=d.get("workflow_id"),
            sent=d.get("sent"),
            chunks=[float(t) for t in d.get("chunks", [])],
            lead=int(d.get("lead", 0)),
            end=d.get("end"),
            done=d.get("done"),
            status=str(d["status"]),
            http_status=d.get("http_status"),
            error=str(d.get("error", "")),
            usage_prompt=d.get("usage_prompt"),
            usage_completion=d.get("usage_completion"),
        )


@dataclass(slots=True)
class Unit:
    """One arrival: a plain request (one call) or a workflow (several calls).

    ``deps[i]`` lists the indices (into ``calls``) that call ``i`` waits for.
    """

    uid: int
    tier: str
    sched: float
    calls: list[CallRecord]
    deps: tuple[tuple[int, ...], ...] = ((),)

    @property
    def start(self) -> float | None:
        """When the unit reached the server: its first call's send time."""
        sent = [c.sent for c in self.calls if c.sent is not None]
        return min(sent) if sent else None

    @property
    def finish(self) -> float | None:
        ends = [c.end for c in self.calls]
        return None if any(e is None for e in ends) else max(e for e in ends if e is not None)


def group_units(records: list[CallRecord], tier_of: dict[int, str] | None = None) -> list[Unit]:
    """Rebuild units from records (for saved results); ``deps`` are not needed after a run."""
    by_unit: dict[int, list[CallRecord]] = {}
    for r in records:
        by_unit.setdefault(r.unit, []).append(r)
    units = []
    for uid, calls in sorted(by_unit.items()):
        calls.sort(key=lambda c: c.call)
        units.append(Unit(uid, calls[0].tier, min(c.sched for c in calls), calls, tuple(() for _ in calls)))
    return units
