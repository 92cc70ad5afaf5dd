"""The online output-length model: priors, quantile bounds, conditional bounds, keys."""

from __future__ import annotations

import random

import pytest

from slorouter.clock import ManualClock
from slorouter.models.lengths import LengthSettings, OnlineLengths, build_lengths
from slorouter.values import Outcome, Status


def _trained(n: int = 2000, seed: int = 0) -> tuple[OnlineLengths, list[int]]:
    rng = random.Random(seed)
    vals = [rng.randint(1, 1000) for _ in range(n)]  # uniform 1..1000: p90 ≈ 900
    m = OnlineLengths(ManualClock(), LengthSettings(quantile=0.9, default_tokens=256))
    m.observe("chat", vals)
    return m, vals


def test_prior_before_anything_is_observed() -> None:
    m = build_lengths(ManualClock(), default_output_tokens=300)
    assert m.bound("chat") == 300
    assert m.bound("chat", max_tokens=100) == 100
    assert m.bound("chat", generated=299) > 299


def test_bound_is_the_quantile_of_observed_lengths() -> None:
    m, _ = _trained()
    assert m.bound("chat") == pytest.approx(900, rel=0.05)


@pytest.mark.parametrize(("g", "lo", "hi"), [(0, 850, 950), (500, 930, 1000), (900, 985, 1001)])
def test_conditional_bound_given_tokens_already_generated(g: int, lo: int, hi: int) -> None:
    # X uniform on 1..1000: given X > g, the 0.9 quantile is g + 0.9 (1000 - g)
    m, _ = _trained()
    b = m.bound("chat", generated=g)
    assert lo <= b <= hi
    assert b > g


def test_conditional_bound_beyond_everything_observed_keeps_growing() -> None:
    m, _ = _trained()
    assert m.bound("chat", generated=2000) == 2000 + 500
    assert m.bound("chat", generated=2000, max_tokens=2100) == 2100


def test_sparse_key_falls_back_to_the_tier_then_takes_over() -> None:
    m, _ = _trained()
    m.observe("chat", [10] * 5, key="k1")  # too few for the key's own digest
    assert m.bound("chat", key="k1") == pytest.approx(m.bound("chat"), rel=0.05)
    m.observe("chat", [10] * 100, key="k1")
    assert m.bound("chat", key="k1") == 10


def test_only_normally_finished_requests_are_learned() -> None:
    m = build_lengths(ManualClock(), default_output_tokens=256)
    for i, st in enumerate([Status.CANCELLED, Status.ERROR, Status.TIMEOUT, Status.REJECTED] * 20):
        m.observe_outcome(Outcome(i, "chat", "b0", st, 0.0, 1.0, prompt_tokens=10, output_tokens=3))
    assert m.bound("chat") == 256
    for i in range(100):
        m.observe_outcome(Outcome(i, "chat", "b0", Status.OK, 0.0, 1.0, prompt_tokens=10, output_tokens=7))
    assert m.bound("chat") == 7


def test_old_lengths_are_forgotten() -> None:
    clock = ManualClock()
    m = OnlineLengths(clock, LengthSettings(half_life_s=10.0, decay_interval_s=1.0))
    m.observe("chat", [100] * 500)
    clock.advance(120.0)  # 12 half-lives
    m.observe("chat", [1000] * 100)
    assert m.bound("chat") == 1000
