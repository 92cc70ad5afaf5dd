"""One simulated engine in real time: the :class:`EngineModel` driven by an asyncio step loop.

The loop plans a step, sleeps until the step's planned end (an absolute time on the
event loop's clock), applies it, and writes one SSE chunk per token straight to each
streaming client's transport (HTTP/1.1 chunked framing, no task switch per token).
Steps follow each other on the model's clock (the next step starts at the previous
planned end, not when the loop happened to wake up), so lateness does not accumulate;
only when the loop falls more than :data:`RESYNC_S` behind does the engine restart its
clock from "now" (counted in :attr:`SimEngine.resyncs`). An idle engine sleeps until a
request arrives.

A request leaves the engine (its KV freed) when it finishes or when :meth:`SimEngine.cancel`
is called — the HTTP handler does that in ``finally``, which runs when the client
disconnects because the server is started with ``handler_cancellation=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from slorouter.engine.model import EngineModel
from slorouter.engine.results import RequestTooLarge, Rid
from slorouter.models.profile import StepProfile
from slorouter.simengine.requests import ApiError, GenSpec, Limits
from slorouter.simengine.text import TOKEN_BYTES, VOCAB_B
from slorouter.simengine.wire import Emitter, make_emitter

RESYNC_S = 0.25


class Gen:
    """One request in flight: its spec, renderer and completion future."""

    __slots__ = ("a", "b", "done", "em", "fpost", "fpre", "n", "rid", "spec", "transport")

    def __init__(
        self, rid: int, spec: GenSpec, transport: asyncio.Transport | None, done: asyncio.Future[None]
    ):
        self.rid = rid
        self.spec = spec
        self.em: Emitter = make_emitter(spec)
        self.transport = transport  # None: not streaming
        self.done = done
        self.n = 0  # tokens produced
        self.a, self.b = self.em.a, self.em.b
        parts = self.em.parts
        if parts is None:
            self.fpre = self.fpost = b""
        else:  # HTTP/1.1 chunk framing around constant-size token chunks, precomputed
            size = len(parts[0]) + TOKEN_BYTES + len(parts[1])
            self.fpre = b"%x\r\n" % size + parts[0]
            self.fpost = parts[1] + b"\r\n"

    def emit(self) -> None:
        i = self.n
        self.n = i + 1
        t = self.transport
        if t is not None and not t.is_closing():
            if i and self.fpre:
                t.write(self.fpre + VOCAB_B[(self.a + i * self.b) & 4095] + self.fpost)
            else:
                data = self.em.token(i)
                t.write(b"%x\r\n%b\r\n" % (len(data), data))

    def finish(self) -> None:
        self.n = n = self.spec.output_tokens
        t = self.transport
        if t is not None and not t.is_closing():
            data = self.em.final(n)
            t.write(b"%x\r\n%b\r\n" % (len(data), data))
        if not self.done.done():
            self.done.set_result(None)


@dataclass(slots=True)
class Counters:
    requests: int = 0
    finished: dict[str, int] = field(default_factory=lambda: {"length": 0, "stop": 0, "abort": 0})
    prompt_tokens: int = 0
    generation_tokens: int = 0


class SimEngine:
    def __init__(
        self,
        profile: StepProfile,
        *,
        model_name: str = "sim-llama",
        seed: int = 0,
        engine: str = "vllm",
        eos_mean: float = 256.0,
        max_model_len: int = 8192,
        noise: float = 0.0,
        record_drift: bool = False,
        scheduling: str = "fcfs",
    ) -> None:
        self.profile = profile
        self.engine = engine
        self.model = EngineModel(profile, seed, noise=noise, scheduling=scheduling)
        self.limits = Limits(model_name, min(max_model_len, profile.kv_capacity_tokens), eos_mean, seed)
        self.counters = Counters()
        self.resyncs = 0
        # (planned step end, time its tokens were written, modelled duration) per step
        self.drift: list[tuple[float, float, float]] | None = [] if record_drift else None
        self._gens: dict[Rid, Gen] = {}
        self._next_rid = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for g in list(self._gens.values()):
            self.cancel(g)

    # ---- requests --------------------------------------------------------------------
    def submit(self, spec: GenSpec, transport: asyncio.Transport | None) -> Gen:
        rid = self._next_rid
        self._next_rid += 1
        loop = asyncio.get_running_loop()
        try:
            self.model.submit(rid, spec.prompt_tokens, spec.output_tokens, loop.time(), spec.priority)
        except RequestTooLarge as e:
            raise ApiError(400, str(e), "BadRequestError", "max_tokens") from None
        except ValueError as e:  # a priority without --scheduling-policy priority, as vLLM
            raise ApiError(400, str(e), "BadRequestError", "priority") from None
        g = Gen(rid, spec, transport, loop.create_future())
        self._gens[rid] = g
        self.counters.requests += 1
        self.counters.prompt_tokens += spec.prompt_tokens
        self._wake.set()
        return g

    def cancel(self, g: Gen) -> None:
        """Drop a request (finished or not); frees its KV at once. Idempotent."""
        if self._gens.pop(g.rid, None) is not None and self.model.abort(g.rid):
            self.counters.finished["abort"] += 1
        if not g.done.done():
            g.done.cancel()

    @property
    def num_streams(self) -> int:
        return len(self._gens)

    # ---- the step loop ---------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        model = self.model
        gens = self._gens
        drift = self.drift
        c = self.counters
        while True:
            now = loop.time()
            last = model.last_step_end
            if now - last > RESYNC_S and model.num_running:
                self.resyncs += 1
                last = now
            end = model.plan(last if model.num_running else now)
            if end is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            # sleep until the planned end; when behind, still yield once so that other engines,
            # new requests and disconnects are served between steps
            await asyncio.sleep(max(0.0, end - loop.time()))
            res = model.step()
            for f in res.finished:
                g = gens.pop(f.rid, None)
                if g is not None:
                    c.finished["stop" if g.spec.eos else "length"] += 1
                    g.finish()
            decoding = model.decoding_rids()
            for rid in decoding:
                gens[rid].emit()
            c.generation_tokens += len(decoding) + len(res.finished)
            if drift is not None:  # tokens of this step are written now
                drift.append((res.end, loop.time(), res.end - res.start))
