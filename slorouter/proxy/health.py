"""Backend health: active probes with hysteresis, a passive circuit breaker per backend,
and operator drains. The one writer of :class:`~slorouter.state.backends.Health`.

A backend may receive new requests (is in ``Health.healthy``, hence in every policy's
snapshot) exactly when all three hold:

* **probes say up.** Every ``health.interval_s`` the monitor sends ``GET health.path``
  (timeout ``health.timeout_s``). Any HTTP answer below 500 counts as alive (a 404
  means the server runs but has no such route); 5xx, refused connections and timeouts
  count as failures. ``health.failures`` consecutive failures take a backend down,
  ``health.successes`` consecutive successes bring it back (hysteresis: one lost probe
  never flaps a backend). Backends start up (optimistic), as before any probe.
* **its circuit is not open.** Live traffic reports every attempt through
  :meth:`HealthMonitor.report` (the Forwarder's callback), as a :class:`Signal`:

  ======================  ===========================================================
  ``ok``                  the backend answered (first byte or a complete < 500 answer)
  ``connect``             connection refused / reset before an answer
  ``timeout``             no first byte within the tier's ``first_byte_s``
  ``http_5xx``            a 5xx answer
  ``broken``              the stream broke or idled out after the first byte
  ``overloaded``          429: the engine sheds load; retried elsewhere, not a fault
  ======================  ===========================================================

  ``closed`` → **open** after ``health.failures`` consecutive failures (an ``ok``
  resets the count). ``open`` → **half-open** at the first successful probe at least
  ``health.cooldown_s`` after opening (the "half-open probe"); the backend is routable
  again on trial: the first live failure re-opens it, the first live success — or
  ``health.successes`` further successful probes — **closes** it.
* **it is not drained** (``POST /admin/drain``): in-flight requests finish, no new ones.

A backend that becomes routable wakes the dispatcher (``on_change``), so requests that
waited for capacity are decided again at once. Pure state transitions live in
:class:`BackendHealth` (clock-free, unit-tested); the monitor adds the probe tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import aiohttp

from slorouter.clock import Clock
from slorouter.config.model import HealthConfig
from slorouter.proxy.upstream import auth_headers
from slorouter.state.backends import Backend, Health

log = logging.getLogger("slorouter.health")


class Signal(StrEnum):
    OK = "ok"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    HTTP_5XX = "http_5xx"
    BROKEN = "broken"
    OVERLOADED = "overloaded"


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class BackendHealth:
    """What the monitor knows of one backend; transitions are pure (time passed in)."""

    probe_up: bool = True
    probe_fails: int = 0  # consecutive
    probe_oks: int = 0  # consecutive
    circuit: Circuit = Circuit.CLOSED
    live_fails: int = 0  # consecutive live failures while closed
    opened_at: float = 0.0
    trial_oks: int = 0  # successful probes while half-open
    drained: bool = False
    ejections: int = 0  # times the backend left the routable set
    last_error: str = ""
    changed_at: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # live signals seen

    @property
    def routable(self) -> bool:
        return self.probe_up and self.circuit is not Circuit.OPEN and not self.drained

    def on_probe(self, ok: bool, now: float, cfg: HealthConfig, error: str = "") -> None:
        if ok:
            self.probe_fails = 0
            self.probe_oks += 1
            if not self.probe_up and self.probe_oks >= cfg.successes:
                self.probe_up = True
            if self.circuit is Circuit.OPEN and now - self.opened_at >= cfg.cooldown_s:
                self.circuit = Circuit.HALF_OPEN
                self.trial_oks = 0
            elif self.circuit is Circuit.HALF_OPEN:
                self.trial_oks += 1
                if self.trial_oks >= cfg.successes:
                    self._close()
        else:
            self.last_error = f"probe: {error}" if error else "probe failed"
            self.probe_oks = 0
            self.probe_fails += 1
            if self.probe_up and self.probe_fails >= cfg.failures:
                self.probe_up = False
            if self.circuit is Circuit.HALF_OPEN:
                self._open(now)

    def on_live(self, signal: Signal, now: float, cfg: HealthConfig, detail: str = "") -> None:
        self.counts[signal.value] = self.counts.get(signal.value, 0) + 1
        if signal is Signal.OVERLOADED:
            return
        if signal is Signal.OK:
            if self.circuit is Circuit.HALF_OPEN:
                self._close()
            elif self.circuit is Circuit.CLOSED:
                self.live_fails = 0
            return
        self.last_error = f"{signal.value}: {detail}" if detail else signal.value
        if self.circuit is Circuit.HALF_OPEN:
            self._open(now)
        elif self.circuit is Circuit.CLOSED:
            self.live_fails += 1
            if self.live_fails >= cfg.failures:
                self._open(now)

    def cooldown_left(self, now: float, cfg: HealthConfig) -> float:
        return max(0.0, self.opened_at + cfg.cooldown_s - now) if self.circuit is Circuit.OPEN else 0.0

    def _open(self, now: float) -> None:
        self.circuit = Circuit.OPEN
        self.opened_at = now
        self.live_fails = 0
        self.trial_oks = 0

    def _close(self) -> None:
        self.circuit = Circuit.CLOSED
        self.live_fails = 0
        self.trial_oks = 0


ChangeListener = Callable[[str, bool], None]  # (backend id, routable now)


class HealthMonitor:
    """Probes, breakers and drains for the current backend set (see module docs)."""

    def __init__(
        self,
        health: Health,
        clock: Clock,
        cfg: HealthConfig,
        on_change: ChangeListener | None = None,
        seed: int = 0,
    ) -> None:
        self.health = health
        self.clock = clock
        self.cfg = cfg
        self.on_change = on_change
        self.states: dict[str, BackendHealth] = {}
        self.backends: dict[str, Backend] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._rng = random.Random(seed)

    # -- configuration -------------------------------------------------------------------

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """Track exactly ``backends``: new ones start routable (and probed), removed ones
        leave the healthy set and stop being probed; kept ones keep their state (a backend
        whose URL changed starts afresh)."""
        new = {b.id: b for b in backends}
        moved = [b for b in self.backends if b in new and new[b].url != self.backends[b].url]
        for bid in [b for b in self.backends if b not in new or b in moved]:
            self.states.pop(bid, None)
            self._wakeups.pop(bid, None)
            task = self._tasks.pop(bid, None)
            if task is not None:
                task.cancel()
            self.health.set(bid, False)
        for bid in new:
            if bid not in self.states:
                self.states[bid] = BackendHealth(changed_at=self.clock.now())
                self._apply(bid)
        self.backends = new
        if self._session is not None:
            for bid in new:
                if bid not in self._tasks:
                    self._start_probe(bid)

    def set_config(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        for ev in self._wakeups.values():
            ev.set()

    def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        for bid in self.backends:
            if bid not in self._tasks:
                self._start_probe(bid)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._session = None

    # -- inputs --------------------------------------------------------------------------

    def report(self, backend_id: str, signal: Signal, detail: str = "") -> None:
        """The Forwarder's passive-health callback (one call per attempt)."""
        st = self.states.get(backend_id)
        if st is None:
            return
        before = st.circuit
        if signal is Signal.OK and before is Circuit.CLOSED:  # the usual answer: routability unchanged
            st.on_live(signal, 0.0, self.cfg, detail)
            return
        st.on_live(signal, self.clock.now(), self.cfg, detail)
        if st.circuit is not before:
            log.warning("backend %s: circuit %s -> %s (%s)", backend_id, before, st.circuit, st.last_error)
            if st.circuit is Circuit.OPEN:
                ev = self._wakeups.get(backend_id)
                if ev is not None:  # probe again as soon as the cooldown ends
                    ev.set()
        self._apply(backend_id)

    def probe_result(self, backend_id: str, ok: bool, error: str = "") -> None:
        st = self.states.get(backend_id)
        if st is None:
            return
        before = (st.probe_up, st.circuit)
        st.on_probe(ok, self.clock.now(), self.cfg, error)
        if (st.probe_up, st.circuit) != before:
            log.warning(
                "backend %s: probes %s, circuit %s%s",
                backend_id,
                "up" if st.probe_up else "down",
                st.circuit,
                "" if ok else f" ({error})",
            )
        self._apply(backend_id)

    def drain(self, backend_id: str, drained: bool = True) -> bool:
        """Stop (or resume) sending new requests to a backend; False if unknown."""
        st = self.states.get(backend_id)
        if st is None:
            return False
        st.drained = drained
        self._apply(backend_id)
        return True

    # -- outputs -------------------------------------------------------------------------

    def describe(self) -> dict[str, dict[str, object]]:
        now = self.clock.now()
        out: dict[str, dict[str, object]] = {}
        for bid, st in self.states.items():
            out[bid] = {
                "routable": st.routable,
                "probe": "up" if st.probe_up else "down",
                "circuit": st.circuit.value,
                "drained": st.drained,
                "ejections": st.ejections,
                "since_s": round(now - st.changed_at, 3),
                "cooldown_left_s": round(st.cooldown_left(now, self.cfg), 3),
                "last_error": st.last_error,
                "signals": dict(st.counts),
            }
        return out

    # -- internals -----------------------------------------------------------------------

    def _apply(self, backend_id: str) -> None:
        st = self.states[backend_id]
        ok = st.routable
        if self.health.set(backend_id, ok):
            st.changed_at = self.clock.now()
            if not ok:
                st.ejections += 1
            log.warning("backend %s %s", backend_id, "is back" if ok else "ejected")
            if self.on_change is not None:
                self.on_change(backend_id, ok)

    def _start_probe(self, backend_id: str) -> None:
        self._wakeups[backend_id] = asyncio.Event()
        self._tasks[backend_id] = asyncio.get_running_loop().create_task(
            self._probe_loop(backend_id), name=f"probe {backend_id}"
        )

    async def _probe_loop(self, backend_id: str) -> None:
        # spread the first probes over one interval so a large fleet is not probed at once
        await asyncio.sleep(self._rng.random() * self.cfg.interval_s)
        while backend_id in self.backends and self._session is not None:
            b = self.backends[backend_id]
            ok, error = await self._probe_once(self._session, b)
            if backend_id not in self.states:
                return
            self.probe_result(backend_id, ok, error)
            st = self.states[backend_id]
            pause = self.cfg.interval_s * (0.9 + 0.2 * self._rng.random())
            left = st.cooldown_left(self.clock.now(), self.cfg)
            if left > 0:
                pause = min(pause, left + 0.01)
            ev = self._wakeups.get(backend_id)
            if ev is None:
                return
            ev.clear()
            with contextlib.suppress(TimeoutError):  # woken early by a config change or an
                async with asyncio.timeout(pause):  # opening circuit (the pause is recomputed)
                    await ev.wait()
            if ev.is_set():
                st = self.states.get(backend_id, st)
                left = st.cooldown_left(self.clock.now(), self.cfg)
                await asyncio.sleep(min(self.cfg.interval_s, left + 0.01) if left > 0 else 0.0)

    async def _probe_once(self, session: aiohttp.ClientSession, b: Backend) -> tuple[bool, str]:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        try:
            async with session.get(
                b.url + self.cfg.path, headers=auth_headers(b), timeout=timeout, allow_redirects=False
            ) as r:
                await r.read()
                if r.status >= 500:
                    return False, f"http {r.status}"
                return True, ""
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return False, type(e).__name__
