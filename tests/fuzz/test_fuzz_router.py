"""Fuzzing the live router (real sockets, real processes): a fast deterministic sample of
generated hostile requests — bodies, headers, methods, paths, framing. Every request gets
an HTTP answer below 500 within the time limit, and afterwards nothing is left in flight
and the router logged no unexpected error. ``scripts/fuzz.py`` runs ≥ 10,000 inputs."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from benchmarks.fuzz.stack import Stack, fuzz_stack
from benchmarks.fuzz.strategies import FuzzRequest, fuzz_requests, send
from tests.promtext import values

SAMPLE = 300


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with fuzz_stack() as s:
        yield s


@settings(
    max_examples=SAMPLE,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(req=fuzz_requests)
def test_every_input_gets_a_timely_answer_below_500(stack: Stack, req: FuzzRequest) -> None:
    a = send(stack.port, req, timeout_s=10.0)
    assert not a.hung, req
    assert a.status is not None, (req, a.raw_head)
    assert 200 <= a.status < 500, (req, a.raw_head)


def test_nothing_left_in_flight_and_no_unexpected_errors(stack: Stack) -> None:
    deadline = time.monotonic() + 5.0
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        inflight = values(text, "slorouter_backend_inflight_requests")
        waiting = values(text, "slorouter_queue_waiting_requests")
        assert inflight and waiting  # the series exist (a renamed metric must not pass silently)
        busy = [(labels, v) for labels, v in [*inflight.items(), *waiting.items()] if v]
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert busy == []
    log = stack.router_log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
