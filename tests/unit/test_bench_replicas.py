"""``benchmarks.replicas`` (``scripts/bench_replicas.py``): the operating point judged over
the seeds the comparison runs, paired differences per seed, and the JSON's shape at a
tiny scale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import replicas as bench
from benchmarks.replicas_stats import paired, probe_summary


def seed(tiers: dict[str, float], goodput: float = 10.0, overall: float = 0.95) -> dict[str, object]:
    return {"tiers": tiers, "goodput_rps_per_server": goodput, "overall": overall}


def test_the_operating_point_is_judged_on_the_mean_over_seeds_or_on_every_seed() -> None:
    per = [seed({"a": 0.95, "b": 0.86}), seed({"a": 0.91, "b": 0.96})]
    mean = probe_summary(per, "mean")
    assert mean["tiers"] == pytest.approx({"a": 0.93, "b": 0.91})
    assert mean["min_tier_dslo_attainment"] == pytest.approx(0.91)  # passes 90 % pooled
    assert probe_summary(per, "every")["min_tier_dslo_attainment"] == pytest.approx(0.86)  # fails
    assert mean["overall"]["dslo_attainment"] == pytest.approx(0.95)
    with pytest.raises(ValueError):
        probe_summary(per, "median")
    with pytest.raises(ValueError):
        probe_summary([], "mean")


def test_paired_differences_cancel_what_the_seeds_share() -> None:
    # seed 2 is hard for both: the differences are steady, the levels are not
    base = [seed({"a": 0.99, "b": 0.98}, 10.0), seed({"a": 0.80, "b": 0.97}, 9.0)]
    run = [seed({"a": 0.98, "b": 0.99}, 10.5), seed({"a": 0.79, "b": 0.97}, 9.3)]
    got = paired(run, base)
    assert got["worst_tier"] == "a"
    assert got["min_tier_delta_points"] == pytest.approx(-1.0)
    assert got["tier_delta_sd_points"]["a"] == pytest.approx(0.0)
    assert got["min_tier_delta_se_points"] == pytest.approx(0.0)
    assert got["tier_delta_points"]["b"] == pytest.approx(0.5)
    assert got["tier_delta_se_points"]["b"] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    assert got["goodput_vs_baseline"] == pytest.approx(1 + 0.4 / 9.5)
    assert got["goodput_vs_baseline_se"] == pytest.approx(math.sqrt(0.02) / math.sqrt(2) / 9.5)
    with pytest.raises(ValueError):
        paired(run, base[:1])


def test_the_json_pairs_every_configuration_with_one_router_at_the_same_seeds(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    argv = ["--json", str(out), "--requests", "150", "--seeds", "2", "--rate", "250"]
    argv += ["--replicas", "1,2", "--sync-ms", "0,50", "--quota", "on", "--ticks-only", ""]
    assert bench.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["seeds"] == [1, 2] and data["rate_rule"] == "pinned" and data["rate_rps"] == 250
    runs = data["runs"]
    # one router, 2 replicas at Δ 0 and 50 ms with the quota, the no-sync control
    assert [(r["replicas"], r["sync_ms"], r["quota"], r["sync"]) for r in runs] == [
        (1, None, None, None),
        (2, 0.0, False, True),  # Δ = 0: nothing stale, no quota
        (2, 50.0, True, True),
        (2, None, None, False),
    ]
    base = runs[0]
    assert data["baseline_goodput_rps_per_server"] == base["goodput_rps_per_server"]
    assert base["min_tier_delta_points"] == 0.0 and base["goodput_vs_baseline"] == pytest.approx(1.0)
    for run in runs:
        assert set(run["seeds"]) == {"1", "2"} and set(run["tiers"]) == set(base["tiers"])
        # the mean of the paired differences is the difference of the means (same seeds)
        worst = min(100 * (run["tiers"][t] - base["tiers"][t]) for t in base["tiers"])
        assert run["min_tier_delta_points"] == pytest.approx(worst)
        assert run["min_tier_delta_se_points"] >= 0.0


def test_bad_options_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.json")
    assert bench.main(["--json", out, "--quota", "maybe"]) == 2
    assert "--quota" in capsys.readouterr().err
    assert bench.main(["--json", out, "--rate", "-3"]) == 2
    with pytest.raises(SystemExit, match="--replicas"):
        bench.main(["--json", out, "--replicas", "x"])
