"""The step-clock engine model: one simulated vLLM-like engine, pure and deterministic.

No asyncio, no wall clock: times are floats passed in by the driver. Two drivers use it:
the real-time HTTP server (``slorouter.simengine.server``) and the offline fleet simulator
(``slorouter.fleetsim.events``, manual clock jumping from event to event).

Model (vLLM V1-like, token granularity instead of 16-token blocks)
-------------------------------------------------------------------
* A request needs ``prompt_tokens`` of prefill, then produces ``output_tokens`` tokens.
  ``submit`` puts it in the *waiting* queue: at the tail (``scheduling="fcfs"``, vLLM's
  default), or at its place by ``(priority, arrival)`` (``scheduling="priority"``, vLLM's
  ``--scheduling-policy priority``; lower ``priority`` first) — :mod:`slorouter.engine.waiting`.
* Each step is planned by :meth:`EngineModel.plan` and applied by :meth:`EngineModel.step`.
  Planning (the scheduler) runs in this order, under a token budget of
  ``max_batched_tokens`` per step:

  1. **decodes**: every running request that finished its prefill decodes one token
     (one token of budget and one new KV slot each);
  2. **running prefills** (oldest first): the next chunk, ``min(remaining, budget)``;
  3. **admission** from the head of the waiting queue (no skipping), while budget
     remains, ``running < max_num_seqs`` and the first chunk fits in the free KV — but
     not in a step that preempted (as vLLM V1).

  KV is allocated at planning time. When a decode or a prefill chunk does not fit, a
  running request is **preempted** (recompute, as vLLM V1) — the newest (fcfs), or the
  last by ``(priority, arrival)`` (priority): its KV is freed, it goes back to the
  waiting queue (fcfs: at the *front*) and, when readmitted, recomputes
  ``prompt + generated`` tokens before producing its next token. Tokens it already
  produced are kept (they were streamed). A chunk that does not finish a prompt takes the
  rest of the budget, so at most one request is part-way through its prefill and a
  victim never had a chunk planned earlier in the step. Decodes are allocated together,
  so a running request that is not preempted always gets its token (vLLM may instead
  skip the rest of its running list for one step when the request it is serving is
  itself the lowest priority). With equal priorities, priority scheduling is exactly
  fcfs (the fcfs queue is always in arrival order, its newest running request the last).
* A request's KV = tokens computed for it: prompt (+ generated − 1 once decoding).
* Step duration (seconds), from the profile's :class:`~slorouter.models.static.LinearStep`::

      c0 + c_batch·batch + c_kv·kv_tokens + c_prefill·prefill_tokens

  ``batch`` = sequences in the step (decodes + prefill chunks), ``kv_tokens`` = KV held
  after this step's allocation, ``prefill_tokens`` = prefill tokens in the step.
  Optional multiplicative log-normal noise (``noise`` = sigma, mean 1), seeded.
* A step starts at ``max(now, end of the previous step)``. At its end, every request in
  it that was decoding gets one token, and a request whose prefill completes gets a
  token too (its first, or the next one after a preemption). A request finishes at the
  end of the step that gives it its ``output_tokens``-th token.

Cost: a step costs O(1) amortized in the batch size plus O(events) (admissions,
prefill chunks, first tokens, finishes, preemptions). Per-request token counts are
lazy: a decoding request stores the step index at which it started decoding and its
count then; finishes are kept in buckets keyed by the step index they will happen at.
:attr:`EngineModel.work_units` counts requests touched, for a count-based cost test.

Token arrival times (for per-token deadlines): with ``keep_history=True`` the engine
records every step's end time and each request's token segments
(:mod:`slorouter.engine.results`).

How a driver uses it: :mod:`slorouter.engine`.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import KeysView
from typing import NamedTuple

from slorouter.engine.results import Finished, RequestTooLarge, Rid, Segment, StepResult
from slorouter.engine.waiting import FcfsQueue, PriorityQueue, make_queue
from slorouter.models.profile import StepProfile

WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3


class _Req:
    __slots__ = (
        "base_step",
        "done_pf",
        "epoch",
        "first_token_step",
        "gen",
        "need",
        "preemptions",
        "priority",
        "prompt",
        "rid",
        "seg_start",
        "seg_tok",
        "segments",
        "seq",
        "state",
        "submitted",
        "target",
    )

    def __init__(self, rid: Rid, prompt: int, target: int, now: float, priority: float, seq: int) -> None:
        self.rid = rid
        self.prompt = prompt
        self.target = target
        self.submitted = now
        self.priority = priority
        self.seq = seq
        self.state = WAITING
        self.need = prompt  # tokens to compute before the next token (prompt + generated)
        self.done_pf = 0  # prefill tokens allocated so far
        self.gen = 0  # tokens generated (as of base_step when decoding)
        self.base_step = 0  # first decode step index (when decoding)
        self.epoch = 0  # bumped at preemption/abort: invalidates plan and finish entries
        self.preemptions = 0
        self.first_token_step = -1
        self.seg_start = 0
        self.seg_tok = 0
        self.segments: list[Segment] = []


class _Plan(NamedTuple):
    idx: int
    start: float
    end: float
    batch: int
    num_decodes: int
    prefill_tokens: int
    kv_tokens: int
    chunks: list[tuple[_Req, int]]  # (request, epoch) that got a prefill chunk
    preempted: tuple[Rid, ...]


class EngineModel:
    def __init__(
        self,
        profile: StepProfile,
        seed: int = 0,
        *,
        noise: float = 0.0,
        keep_history: bool = False,
        scheduling: str = "fcfs",
    ) -> None:
        if profile.max_batched_tokens < profile.max_num_seqs:
            raise ValueError(
                f"profile {profile.name!r}: max_batched_tokens ({profile.max_batched_tokens}) must be >= "
                f"max_num_seqs ({profile.max_num_seqs}), as vLLM requires"
            )
        if noise < 0:
            raise ValueError("noise must be >= 0")
        self.profile = profile
        self._coef = profile.step
        self._cap = profile.kv_capacity_tokens
        self._max_seqs = profile.max_num_seqs
        self._budget = profile.max_batched_tokens
        self._noise = noise
        self._rng = random.Random(seed)
        self._keep = keep_history
        self.step_ends: array[float] = array("d")
        self._reqs: dict[Rid, _Req] = {}
        self.scheduling = scheduling
        # may hold aborted entries (state DONE), skipped
        self._waiting: FcfsQueue[_Req] | PriorityQueue[_Req] = make_queue(scheduling, DONE)
        self._reorders = self._waiting.reorders
        self._seq = 0
        self._n_waiting = 0
        self._running: dict[Rid, _Req] = {}  # admission order: last = newest
        self._decoding: dict[Rid, _Req] = {}
        self._prefilling: dict[Rid, _Req] = {}
        self._finish_at: dict[int, list[tuple[_Req, int]]] = {}
        self._kv = 0
        self._steps = 0  # completed steps = index of the next step
        self._dec_alloc = 0  # 1 while the planned step's decode slots are allocated
        self._last_end = -math.inf
        self._plan: _Plan | None = None
        self._preemptions = 0
        self.work_units = 0  # requests touched by plan/step (cost diagnostics)

    # ---- read-only views -------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return self._n_waiting

    @property
    def kv_tokens(self) -> int:
        return self._kv

    @property
    def kv_usage(self) -> float:
        return self._kv / self._cap

    @property
    def num_preemptions_total(self) -> int:
        return self._preemptions

    @property
    def steps_done(self) -> int:
        return self._steps

    @property
    def last_step_end(self) -> float:
        """End of the last applied step (``-inf`` before the first)."""
        return self._last_end

    @property
    def planned_end(self) -> float | None:
        return None if self._plan is None else self._plan.end

    def running_rids(self) -> KeysView[Rid]:
        return self._running.keys()

    def decoding_rids(self) -> KeysView[Rid]:
        """Running requests past their prefill. Read right after :meth:`step`, these are
        exactly the requests (besides ``finished``) that got a token in that step."""
        return self._decoding.keys()

    def __contains__(self, rid: Rid) -> bool:
        return rid in self._reqs

    def generated(self, rid: Rid) -> int:
        """Tokens produced so far (as of the last applied step)."""
        r = self._reqs[rid]
        return r.gen + (self._steps - r.base_step) if r.state == DECODE else r.gen

    def segments(self, rid: Rid) -> tuple[Segment, ...]:
        r = self._reqs[rid]
        return tuple(r.segments) + ((self._open_segment(r),) if r.state == DECODE else ())

    # ---- requests --------------------------------------------------------------------
    def submit(
        self, rid: Rid, prompt_tokens: int, output_tokens: int, now: float, priority: float = 0.0
    ) -> None:
        """Queue a request. ``priority`` (lower first) needs ``scheduling="priority"``,
        as vLLM refuses a non-zero priority without ``--scheduling-policy priority``."""
        if rid in self._reqs:
            raise ValueError(f"request {rid!r} is already in the engine")
        if prompt_tokens < 1 or output_tokens < 1:
            raise ValueError("prompt_tokens and output_tokens must be >= 1")
        if math.isnan(priority):
            raise ValueError("priority must be a number, got NaN")
        if priority != 0 and not self._reorders:
            raise ValueError(f"Got priority {priority} but Priority scheduling is not enabled.")
        if prompt_tokens + output_tokens > self._cap:
            raise RequestTooLarge(
                f"prompt ({prompt_tokens}) + output ({output_tokens}) tokens exceed the KV capacity "
                f"({self._cap} tokens)"
            )
        r = _Req(rid, prompt_tokens, output_tokens, now, priority, self._seq)
        self._seq += 1
        self._reqs[rid] = r
        self._waiting.add(r)
        self._n_waiting += 1

    def abort(self, rid: Rid) -> bool:
        """Drop a request now, freeing its KV (also mid-step). False if unknown/finished."""
        r = self._reqs.pop(rid, None)
        if r is None:
            return False
        if r.state == WAITING:
            self._n_waiting -= 1  # left in the queue, skipped when reached
        else:
            self._kv -= self._req_kv(r)
            self._running.pop(rid, None)
            self._decoding.pop(rid, None)
            self._prefilling.pop(rid, None)
        r.state = DONE
        r.epoch += 1
        return True

    # ---- the step clock --------------------------------------------------------------
    def plan(self, now: float) -> float | None:
        """Plan the next step (if not planned yet); return its end time, None when idle."""
        if self._plan is not None:
            return self._plan.end
        if not self._running and not self._n_waiting:
            return None
        budget = self._budget
        preempted: list[Rid] = []
        # 1. decodes
        while self._kv + len(self._decoding) > self._cap and self._running:
            preempted.append(self._preempt(self._waiting.victim(self._running)).rid)
        n_dec = len(self._decoding)
        self._kv += n_dec
        self._dec_alloc = 1
        budget -= n_dec
        # 2. running prefills, oldest first
        chunks: list[tuple[_Req, int]] = []
        prefill = 0
        if self._prefilling and budget > 0:
            todo: list[_Req] = []
            want = 0
            for r in self._prefilling.values():
                todo.append(r)
                want += r.need - r.done_pf
                if want >= budget:
                    break
            self.work_units += len(todo)
            for r in todo:
                if r.state != PREFILL or budget <= 0:
                    continue
                chunk = min(r.need - r.done_pf, budget)
                while self._kv + chunk > self._cap and r.state == PREFILL:
                    preempted.append(self._preempt(self._waiting.victim(self._running)).rid)
                if r.state != PREFILL:
                    break  # preempted itself: the last (fcfs: newest; priority: lowest)
                r.done_pf += chunk
                self._kv += chunk
                budget -= chunk
                prefill += chunk
                chunks.append((r, r.epoch))
        # 3. admissions (not in a step that preempted)
        if not preempted:
            waiting = self._waiting
            while budget > 0 and self._n_waiting and len(self._running) < self._max_seqs:
                r = waiting.head()  # drops entries aborted while waiting
                chunk = min(r.need, budget)
                if self._kv + chunk > self._cap:
                    break
                waiting.pop()
                self._n_waiting -= 1
                self.work_units += 1
                r.state = PREFILL
                r.done_pf = chunk
                self._running[r.rid] = r
                self._prefilling[r.rid] = r
                self._kv += chunk
                budget -= chunk
                prefill += chunk
                chunks.append((r, r.epoch))
        n_dec = len(self._decoding)  # decoders preempted by prefill chunks got no token
        batch = n_dec + len(chunks)
        if batch == 0:  # cannot happen with the submit-time capacity check
            self._dec_alloc = 0
            return None
        c = self._coef
        dur = c.c0_s + c.c_batch_s * batch + c.c_kv_s * self._kv + c.c_prefill_s * prefill
        if self._noise:
            s = self._noise
            dur *= self._rng.lognormvariate(-0.5 * s * s, s)
        start = max(now, self._last_end)
        self._plan = _Plan(
            self._steps, start, start + dur, batch, n_dec, prefill, self._kv, chunks, tuple(preempted)
        )
        return start + dur

    def step(self) -> StepResult:
        """Apply the planned step (call at or after its end time)."""
        p = self._plan
        if p is None:
            raise RuntimeError("step() without a planned step: call plan(now) first")
        self._plan = None
        idx = p.idx
        self._steps = idx + 1
        self._dec_alloc = 0
        self._last_end = p.end
        if self._keep:
            self.step_ends.append(p.end)
        first: list[Rid] = []
        finished: list[Finished] = []
        for r, epoch in p.chunks:
            self.work_units += 1
            if r.epoch != epoch or r.done_pf < r.need:
                continue  # aborted, or a partial chunk
            g = r.gen
            r.gen = g + 1
            if g == 0:
                first.append(r.rid)
                r.first_token_step = idx
            del self._prefilling[r.rid]
            r.seg_start, r.seg_tok = idx, g
            if r.gen >= r.target:
                finished.append(self._finish(r, idx))
            else:
                r.state = DECODE
                r.base_step = idx + 1
                self._decoding[r.rid] = r
                self._finish_at.setdefault(idx + r.target - r.gen, []).append((r, r.epoch))
        due = self._finish_at.pop(idx, None)
        if due:
            for r, epoch in due:
                self.work_units += 1
                if r.epoch == epoch and r.state == DECODE:
                    del self._decoding[r.rid]
                    finished.append(self._finish(r, idx))
        return StepResult(
            idx,
            p.start,
            p.end,
            p.batch,
            p.num_decodes,
            p.prefill_tokens,
            p.kv_tokens,
            tuple(first),
            tuple(finished),
            p.preempted,
        )

    # ---- internals -------------------------------------------------------------------
    def _req_kv(self, r: _Req) -> int:
        if r.state == DECODE:
            return r.need + self._steps + self._dec_alloc - r.base_step
        return r.done_pf if r.state == PREFILL else 0

    def _open_segment(self, r: _Req) -> Segment:
        return Segment(r.seg_start, r.seg_tok, r.gen + self._steps - r.base_step - r.seg_tok)

    def _finish(self, r: _Req, idx: int) -> Finished:
        self._kv -= self._req_kv(r) if r.state == DECODE else r.done_pf
        if r.state == DECODE:
            r.gen = r.target
        r.segments.append(Segment(r.seg_start, r.seg_tok, r.target - r.seg_tok))
        r.state = DONE
        del self._running[r.rid]
        del self._reqs[r.rid]
        return Finished(
            r.rid, r.prompt, r.target, r.submitted, r.first_token_step, r.preemptions, tuple(r.segments)
        )

    def _preempt(self, rid: Rid) -> _Req:
        """Preempt running request ``rid`` (the scheduling's victim: fcfs, the newest)."""
        r = self._running.pop(rid)
        self.work_units += 1
        self._kv -= self._req_kv(r)
        if r.state == DECODE:
            r.segments.append(self._open_segment(r))
            r.gen += self._steps - r.base_step
            del self._decoding[rid]
        else:
            del self._prefilling[rid]
        r.need = r.prompt + r.gen
        r.done_pf = 0
        r.state = WAITING
        r.epoch += 1
        r.preemptions += 1
        self._preemptions += 1
        self._waiting.requeue(r)
        self._n_waiting += 1
        return r
