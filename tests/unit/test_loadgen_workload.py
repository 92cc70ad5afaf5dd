"""Workload files: parsing, path-qualified errors, tier sources, arrival processes, planning."""

from __future__ import annotations

import itertools
import random
import statistics
from pathlib import Path

import pytest
import yaml

from loadgen import arrivals
from loadgen.errors import WorkloadError
from loadgen.planner import Planner
from loadgen.prompts import PromptMaker, count_sim_tokens
from loadgen.workload import load_workload, parse_workload

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "name": "t",
    "tiers": [
        {"name": "chat", "class": "latency", "ttft_ms": 500, "tpot_ms": 50},
        {"name": "tools", "class": "deadline", "deadline_ms": 5000},
        {"name": "agents", "class": "workflow", "deadline_ms": 20000},
        {"name": "bulk", "class": "best_effort", "weight": 0.1},
    ],
    "arrival": {"process": "poisson", "rate": 10},
    "duration_s": 5,
    "mix": [
        {
            "tier": "chat",
            "share": 2,
            "prompt_tokens": {"dist": "uniform", "min": 10, "max": 20},
            "output_tokens": 8,
        },
        {"tier": "tools", "share": 1},
        {"tier": "agents", "share": 1, "workflow": {"shape": "fanout", "width": 2}},
    ],
}


def parse(data: dict[str, object]) -> object:
    return parse_workload(data, "w.yaml", REPO)


def with_(path: str, value: object) -> dict[str, object]:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_parses_and_normalizes_shares() -> None:
    w = parse_workload(BASE, "w.yaml", REPO)
    assert [e.share for e in w.mix] == pytest.approx([0.5, 0.25, 0.25])
    assert w.mix[1].stream is False  # deadline tiers default to non-streaming
    assert w.mix[2].workflow is not None and w.mix[2].workflow.deps() == ((), (0,), (0,), (1, 2))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("mix.1.share", 0, "w.yaml: mix[1].share: must be > 0, got 0"),
        ("mix.0.tier", "nope", "w.yaml: mix[0].tier: unknown tier 'nope'"),
        ("tiers.0.tpot_ms", -1, "w.yaml: tiers[0].tpot_ms: must be > 0, got -1"),
        ("arrival", {"process": "poison", "rate": 1}, "w.yaml: arrival.process: must be one of"),
        ("mix.0.prompt_tokens", {"dist": "uniform", "min": 5}, "mix[0].prompt_tokens.max: is required"),
        ("mix.0.workflow", {"shape": "chain"}, "mix[0].workflow: only for workflow-class tiers"),
        ("mix.0.output_tokens", {"dist": "trace"}, "mix[0].output_tokens: {dist: trace} without a path"),
        ("tier_by", "api_key", "mix[0].tier: tier_by: api_key needs api_keys.chat"),
        ("colour", "blue", "w.yaml: colour: unknown key"),
    ],
)
def test_errors_name_the_file_and_path(path: str, value: object, message: str) -> None:
    with pytest.raises(WorkloadError) as exc:
        parse(with_(path, value))
    assert message in str(exc.value)


def test_tiers_from_the_router_config(tmp_path: Path) -> None:
    (tmp_path / "router.yaml").write_text(
        "server: {port: 1}\ntiers:\n  - {name: gold, class: latency, ttft_ms: 300, tpot_ms: 30, weight: 4,"
        " when_late: reject}\n  - {name: bulk, class: best_effort}\n"
    )
    (tmp_path / "w.yaml").write_text(
        "tiers_from: router.yaml\narrival: {process: constant, rate: 2}\nrequests: 3\n"
        "mix: [{tier: gold, share: 1}, {tier: bulk, share: 1}]\n"
    )
    w = load_workload(tmp_path / "w.yaml")
    assert w.tiers["gold"].tpot_ms == 30 and w.tiers["gold"].weight == 4
    (tmp_path / "router.yaml").write_text("tiers:\n  - {name: gold, class: latency, ttft_ms: 300}\n")
    with pytest.raises(WorkloadError, match=r"router.yaml: tiers\[0\].tpot_ms: is required"):
        load_workload(tmp_path / "w.yaml")


def test_shipped_workloads_load() -> None:
    files = sorted((REPO / "config" / "workloads").glob("*.yaml"))
    assert files, "config/workloads/ should ship workloads"
    for f in files:
        w = load_workload(f)
        assert w.mix and (w.duration_s or w.requests or w.arrival.trace is not None or w.arrival.closed_loop)


def test_poisson_and_gamma_rates_and_burstiness() -> None:
    for burst in (0.25, 1.0, 4.0):
        spec = arrivals.ArrivalSpec("gamma", rate=50.0, burstiness=burst)
        it = arrivals.offsets(spec, random.Random(3))
        ts = [next(it)[0] for _ in range(20001)]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        assert 20000 / ts[-1] == pytest.approx(50.0, rel=0.05)
        cv2 = statistics.pvariance(gaps) / statistics.fmean(gaps) ** 2
        assert cv2 == pytest.approx(1.0 / burst, rel=0.1)  # Gamma(shape b): CV^2 = 1/b


def test_constant_rate_is_exact() -> None:
    it = arrivals.offsets(arrivals.ArrivalSpec("constant", rate=4.0), random.Random(0))
    assert [next(it)[0] for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]


def test_trace_replay_keeps_the_pattern_and_hits_the_rate() -> None:
    w = parse_workload(
        {
            "tiers": [{"name": "c", "class": "latency", "ttft_ms": 1, "tpot_ms": 1}],
            "arrival": {"process": "trace", "path": "splitwise_conv.csv", "rate": 20, "window_s": 600},
            "mix": [{"tier": "c", "share": 1, "prompt_tokens": {"dist": "trace", "max": 1000}}],
            "requests": 500,
        },
        "w.yaml",
        REPO,
    )
    trace = w.arrival.trace
    assert trace is not None
    units = list(Planner(w).open_loop())
    assert len(units) == 500
    factor = trace.native_rate / 20
    assert [u.sched for u in units[:50]] == pytest.approx([t * factor for t in trace.times[:50]])
    assert [u.calls[0].prompt_tokens for u in units[:50]] == [min(p, 1000) for p in trace.prompts[:50]]
    # the rate holds across the loop seam: 1.3 passes of a 40-request window
    w2 = parse_workload(
        {
            "tiers": [{"name": "c", "class": "best_effort"}],
            "arrival": {"process": "trace", "path": "splitwise_conv.csv", "rate": 20, "window_s": 10},
            "mix": [{"tier": "c", "share": 1}],
            "requests": 1000,
        },
        "w.yaml",
        REPO,
    )
    units2 = list(Planner(w2).open_loop())
    assert 999 / units2[-1].sched == pytest.approx(20, rel=0.05)


def test_same_seed_same_shapes_at_any_rate() -> None:
    w = parse_workload(BASE, "w.yaml", REPO)
    a = list(Planner(w.with_overrides(rate=5)).open_loop())
    b = list(Planner(w.with_overrides(rate=50, duration_s=0.5)).open_loop())
    shape = lambda u: (u.tier, [(c.prompt_tokens, c.max_tokens) for c in u.calls])  # noqa: E731
    assert [shape(u) for u in b] == [shape(u) for u in a[: len(b)]]
    tiers = [u.tier for u in Planner(w.with_overrides(rate=1000, duration_s=4)).open_loop()]
    assert tiers.count("chat") / len(tiers) == pytest.approx(0.5, abs=0.03)


def test_lognormal_lengths_have_the_asked_mean_and_caps() -> None:
    w = parse(with_("mix.0.output_tokens", {"dist": "lognormal", "mean": 200, "sd": 100, "max": 1000}))
    spec = w.mix[0].output  # type: ignore[attr-defined]
    rng = random.Random(1)
    xs = [spec.sample(rng) for _ in range(20000)]
    assert statistics.fmean(xs) == pytest.approx(200, rel=0.03)
    assert max(xs) <= 1000 and min(xs) >= 1


@pytest.mark.parametrize("n", [1, 7, 128, 3000, 70000])
def test_prompts_hit_the_token_count_under_the_sim_rule(n: int) -> None:
    pm = PromptMaker(5)
    p1, p2 = pm.make(n), pm.make(n)
    assert count_sim_tokens(p1) == n == count_sim_tokens(p2)
    assert p1 != p2  # a different start in the pool
