"""The health state machine (probes with hysteresis, circuit breaker, drains) and the
monitor's effect on the shared Health set, with a manual clock."""

from __future__ import annotations

from prometheus_client import generate_latest

from slorouter.clock import ManualClock
from slorouter.config.model import HealthConfig
from slorouter.metrics import build_registry
from slorouter.metrics.health import HealthMetrics
from slorouter.proxy.health import BackendHealth, Circuit, HealthMonitor, Signal
from slorouter.state.backends import Backend, Health
from tests.promtext import value, values

CFG = HealthConfig(failures=3, successes=2, cooldown_s=5.0)


def test_probes_need_consecutive_failures_and_successes() -> None:
    st = BackendHealth()
    for _ in range(2):
        st.on_probe(False, 0.0, CFG)
    assert st.routable  # two failures: not yet
    st.on_probe(True, 0.0, CFG)  # a success resets the count
    st.on_probe(False, 0.0, CFG)
    st.on_probe(False, 0.0, CFG)
    assert st.routable
    st.on_probe(False, 0.0, CFG)
    assert not st.routable and not st.probe_up
    st.on_probe(True, 0.0, CFG)
    assert not st.routable  # one success is not enough to come back
    st.on_probe(True, 0.0, CFG)
    assert st.routable


def test_breaker_opens_on_consecutive_live_failures_only() -> None:
    st = BackendHealth()
    st.on_live(Signal.CONNECT, 0.0, CFG)
    st.on_live(Signal.HTTP_5XX, 0.0, CFG)
    st.on_live(Signal.OK, 0.0, CFG)  # resets
    st.on_live(Signal.TIMEOUT, 0.0, CFG)
    st.on_live(Signal.OVERLOADED, 0.0, CFG)  # 429: not a fault
    st.on_live(Signal.BROKEN, 0.0, CFG)
    assert st.circuit is Circuit.CLOSED
    st.on_live(Signal.CONNECT, 1.0, CFG)
    assert st.circuit is Circuit.OPEN and not st.routable and st.opened_at == 1.0


def test_half_open_after_cooldown_then_closed_or_reopened() -> None:
    st = BackendHealth()
    for _ in range(3):
        st.on_live(Signal.CONNECT, 10.0, CFG)
    st.on_probe(True, 14.9, CFG)  # cooldown not over: stays open
    assert st.circuit is Circuit.OPEN
    assert st.cooldown_left(14.9, CFG) > 0
    st.on_probe(True, 15.0, CFG)
    assert st.circuit is Circuit.HALF_OPEN and st.routable
    st.on_live(Signal.HTTP_5XX, 15.5, CFG)  # one trial failure re-opens at once
    assert st.circuit is Circuit.OPEN and st.opened_at == 15.5
    st.on_probe(True, 20.5, CFG)
    assert st.circuit is Circuit.HALF_OPEN
    st.on_live(Signal.OK, 20.6, CFG)
    assert st.circuit is Circuit.CLOSED and st.routable


def test_half_open_closes_after_enough_probe_successes_without_traffic() -> None:
    st = BackendHealth()
    for _ in range(3):
        st.on_live(Signal.TIMEOUT, 0.0, CFG)
    st.on_probe(True, 5.0, CFG)
    assert st.circuit is Circuit.HALF_OPEN
    st.on_probe(True, 6.0, CFG)
    assert st.circuit is Circuit.HALF_OPEN
    st.on_probe(True, 7.0, CFG)
    assert st.circuit is Circuit.CLOSED


def test_monitor_drives_the_shared_health_set() -> None:
    clock = ManualClock()
    health = Health(["a", "b"])
    changes: list[tuple[str, bool]] = []
    mon = HealthMonitor(health, clock, CFG, on_change=lambda b, ok: changes.append((b, ok)))
    mon.set_backends([Backend("a", "http://127.0.0.1:1"), Backend("b", "http://127.0.0.1:2")])
    assert health.healthy == {"a", "b"}
    for _ in range(3):
        mon.report("a", Signal.CONNECT, "refused")
    assert health.healthy == {"b"}
    assert changes == [("a", False)]
    mon.drain("b")
    assert health.healthy == frozenset()
    mon.drain("b", False)
    clock.advance(5.0)
    mon.probe_result("a", True)  # the half-open probe: back on trial
    assert health.healthy == {"a", "b"}
    assert changes[-1] == ("a", True)
    desc = mon.describe()
    assert desc["a"]["circuit"] == "half_open" and desc["a"]["ejections"] == 1
    assert desc["a"]["signals"] == {"connect": 3}
    text = generate_latest(build_registry(HealthMetrics(mon))).decode()
    assert value(text, "slorouter_backend_circuit", backend="a", state="half_open") == 1
    assert value(text, "slorouter_backend_circuit", backend="a", state="closed") == 0
    assert sum(values(text, "slorouter_backend_circuit").values()) == 2  # one state per backend
    assert value(text, "slorouter_backend_ejections_total", backend="b") == 1
    assert value(text, "slorouter_backend_drained", backend="b") == 0
    # a reload removes "b" and adds "c": "b" leaves the set, "c" starts routable
    mon.set_backends([Backend("a", "http://127.0.0.1:1"), Backend("c", "http://127.0.0.1:3")])
    assert health.healthy == {"a", "c"}
    assert mon.drain("b") is False
    mon.report("b", Signal.CONNECT)  # a straggler of a removed backend: ignored
    assert "b" not in mon.states
    # the same id at a new URL starts afresh (its old history says nothing of the new server)
    for _ in range(3):
        mon.report("c", Signal.CONNECT)
    assert "c" not in health.healthy
    mon.set_backends([Backend("a", "http://127.0.0.1:1"), Backend("c", "http://127.0.0.1:4")])
    assert health.healthy == {"a", "c"} and mon.states["c"].circuit is Circuit.CLOSED
