"""Warm restart: what the latency and length models learned survives a snapshot/restore
round trip (predictions equal, every saved value equal), a bad state file changes
nothing and says where it is bad, an older format is refused with what to do, and
reading a model never creates state."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from slorouter.clock import ManualClock
from slorouter.models import persist
from slorouter.models.latency import OnlineLatency, build_latency
from slorouter.models.lengths import LengthSettings, OnlineLengths
from slorouter.values import Outcome, Status

OLD_FORMAT_FILE = Path(__file__).parents[1] / "data" / "state" / "format2.json"  # written by the code before


def _trained(clock: ManualClock) -> tuple[OnlineLatency, OnlineLengths]:
    rng = random.Random(3)
    lat = build_latency(clock, prefill_ratio=2.0)
    lens = OnlineLengths(clock, LengthSettings())
    for i in range(300):
        clock.advance(0.05)
        b = rng.randint(1, 40)
        kv = rng.randint(100, 20_000)
        gap = 0.02 + 0.001 * b + 1e-6 * kv
        n = rng.choice((8, 40, 300))  # short responses are pooled, long ones give windows
        samples = ((gap * rng.uniform(0.9, 1.3), b, kv),) * n
        first = clock.now() - 0.5
        lat.observe_outcome(
            Outcome(
                i,
                "chat",
                "e0" if i % 2 else "e1",
                Status.OK,
                first - 0.2,
                clock.now(),
                prompt_tokens=rng.randint(100, 3000),
                output_tokens=n + 1,
                dispatched_at=first - 0.1,
                first_token_at=first,
                dispatch_load=(b, kv, 0),
                step_samples=samples,
            )
        )
        lens.observe("chat", [rng.randint(10, 500)], key="k1", model="m")
    return lat, lens


def _queries() -> list[tuple[int, int]]:
    return [(1, 200), (16, 8000), (40, 20_000), (3, 500), (256, 200_000)]


def test_round_trip_keeps_predictions_and_every_saved_value() -> None:
    clock = ManualClock(100.0)
    lat, lens = _trained(clock)
    lat.refit("e0")
    data = persist.snapshot(lat, lens, clock.now(), 1.7e9)

    later = ManualClock(5.0)  # a new process: another monotonic origin
    lat2 = build_latency(later, prefill_ratio=2.0)
    lens2 = OnlineLengths(later, LengthSettings())
    assert lat2.step_time("e0", 16, 8000) != pytest.approx(lat.step_time("e0", 16, 8000), rel=1e-9)
    got = persist.restore(data, lat2, lens2, later.now())
    assert got["backends"] == 2 and got["length_digests"] == 3 and got["saved_at"] == 1.7e9
    assert got["observations"] == lat.observations("e0") + lat.observations("e1") > 0
    for b in ("e0", "e1"):
        for batch, kv in _queries():
            assert lat2.step_time(b, batch, kv) == lat.step_time(b, batch, kv)
            assert lat2.support(b, batch, kv) == lat.support(b, batch, kv)
        assert lat2.prefill_time(b, 5000) == lat.prefill_time(b, 5000)
        assert lat2.linear(b) == lat.linear(b)
        assert lat2.limits(b) == lat.limits(b)  # the learned TTFT excess too
        assert lat.limits(b).ttft_ys  # something was learned (here: first tokens faster than the model)
        assert lat2.describe(b) == lat.describe(b)
    # every saved value (sums, digests, pools, counts, ages) comes back as it was
    assert _rounded(lat2.to_state(later.now())) == _rounded(lat.to_state(clock.now()))
    assert _rounded(lens2.to_state(later.now())) == _rounded(lens.to_state(clock.now()))
    for g in (0, 50, 300):
        assert lens2.bound("chat", g) == lens.bound("chat", g)
        assert lens2.bound("chat", g, key="k1") == lens.bound("chat", g, key="k1")
    # the restored models keep learning, as the originals do
    for m, c in ((lat, clock), (lat2, later)):
        c.advance(3.0)
        m.observe("e0", [(0.5, 2, 300)] * 300)
    for batch, kv in _queries():
        assert lat2.step_time("e0", batch, kv) == pytest.approx(lat.step_time("e0", batch, kv), rel=1e-12)
    lens2.observe("chat", [7])


def _rounded(v: Any) -> Any:
    """Floats to 10 significant digits (ages go through another clock origin)."""
    if isinstance(v, float):
        return float(f"{v:.10g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


def _with(path: list[str], value: Any) -> bytes:
    """A good state file with one value replaced (path into the JSON)."""
    clock = ManualClock(100.0)
    lat, lens = _trained(clock)
    raw = orjson.loads(persist.snapshot(lat, lens, clock.now(), 1.7e9))
    node = raw
    for k in path[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[path[-1] if isinstance(node, dict) else int(path[-1])] = value
    return orjson.dumps(raw)


BACKEND = ["latency", "backends", "e0"]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"not json", "not JSON"),
        (b"[]", "top level"),
        (orjson.dumps({"format": 99}), "unknown format 99"),
        (orjson.dumps({"format": 3}), "latency: must be an object"),
        (_with(["latency", "v"], 7), "latency: version 7"),
        (_with([*BACKEND, "fit", "xty"], [1, 2]), "latency.backends.e0.fit.xty: must be a list of 3"),
        (_with([*BACKEND, "fit", "xtx_upper", "2"], "x"), "latency.backends.e0.fit.xtx_upper[2]"),
        (_with([*BACKEND, "fit", "decode", "c0_s"], -1.0), "decode.c0_s: must be >= 0"),
        (_with([*BACKEND, "fit", "age_s"], -1.0), "fit.age_s: must be >= 0"),
        (_with([*BACKEND, "ratio", "value"], "x"), "ratio.value"),
        (_with([*BACKEND, "buckets", "buckets", "0", "key"], "k"), "buckets[0].key"),
        (_with([*BACKEND, "buckets", "buckets", "0", "digest", "centroids"], "x"), "digest.centroids"),
        (_with([*BACKEND, "windows", "tokens"], None), "windows.tokens"),
        (_with([*BACKEND, "ttft", "buckets"], {}), "ttft.buckets: must be a list"),
        (_with([*BACKEND, "outcomes"], 1.5), "outcomes: must be a whole number"),
        (_with([*BACKEND, "ttft"], None), "ttft: must be an object"),
        (_with(["latency", "prefill_ratio", "applied"], -2), "prefill_ratio.applied"),
        (_with(["lengths", "digests", "0", "kind"], "colour"), "lengths.digests[0]"),
        (_with(["lengths", "digests", "0", "digest", "age_s"], -1), "lengths.digests[0].digest.age_s"),
    ],
)
def test_bad_state_is_refused_says_where_and_changes_nothing(data: bytes, where: str | None) -> None:
    clock = ManualClock()
    lat = build_latency(clock)
    lens = OnlineLengths(clock, LengthSettings())
    lat.observe("e0", [(0.05, 8, 1000)] * 300)
    lens.observe("t", [40] * 50)
    before = lat.to_state(clock.now()), lens.to_state(clock.now()), lat.step_time("e0", 8, 1000)
    with pytest.raises(persist.StateError) as e:
        persist.restore(data, lat, lens, clock.now())
    if where is not None:
        assert where in str(e.value)
    assert (lat.to_state(clock.now()), lens.to_state(clock.now()), lat.step_time("e0", 8, 1000)) == before


def test_a_state_file_of_the_older_format_is_refused_with_what_to_do() -> None:
    """A file written by the router before the explicit part states (format 2: the
    latency model's private field names) is not read; the message says the models start
    from their priors and the next save replaces the file."""
    data = OLD_FORMAT_FILE.read_bytes()
    assert orjson.loads(data)["format"] == 2
    clock = ManualClock()
    lat = build_latency(clock)
    lens = OnlineLengths(clock, LengthSettings())
    with pytest.raises(
        persist.StateError, match=r"format 2 .* start from their priors .* next save replaces"
    ):
        persist.restore(data, lat, lens, clock.now())
    assert lat.to_state(clock.now())["backends"] == {} and lens.to_state(clock.now())["digests"] == []


def test_reads_never_create_state() -> None:
    """Asking about a backend nothing was learned about answers from the prior and leaves
    nothing behind (nothing saved, nothing to forget)."""
    clock = ManualClock()
    lat = build_latency(clock)
    fresh = lat.to_state(clock.now())
    for b in ("e0", "e9"):
        lat.step_time(b, 8, 1000)
        lat.prefill_time(b, 1000)
        lat.support(b, 8, 1000)
        lat.linear(b)
        lat.limits(b)
        lat.observations(b)
        lat.describe(b)
        lat.refit(b)
    assert lat.to_state(clock.now()) == fresh and fresh["backends"] == {}
    lat.observe("e0", [(0.05, 8, 1000)] * 10)
    assert list(lat.to_state(clock.now())["backends"]) == ["e0"]
