"""The service-gain comparison of scripts/bench_policies.py: the EDF baseline is
least-request on engines scheduling by priority, and the ceilings are 1 / share of max."""

from __future__ import annotations

import pytest

from benchmarks import policies as bench
from slorouter.fleetsim.scenario import load_scenario


def test_the_edf_baseline_is_least_request_on_priority_engines() -> None:
    assert "least-request+edf" in bench.GAIN_POLICIES and "least-request" in bench.GAIN_POLICIES
    assert "least-request+edf" in bench.policies()
    assert bench.VARIANTS["least-request+edf"] == ("least-request", {})
    scn = load_scenario("mixed")
    assert scn.scheduling == "fcfs"
    edf = bench.variant_scenario(scn, "least-request+edf")
    assert edf.scheduling == "priority" and edf.tiers == scn.tiers and edf.bins == scn.bins
    assert bench.variant_scenario(scn, "least-request") == scn
    for name, kind in (("tempo+edf", "tempo"), ("polyserve+edf", "polyserve")):
        assert bench.VARIANTS[name] == (kind, {})
        assert bench.variant_scenario(scn, name).scheduling == "priority"
        assert name not in bench.GAIN_POLICIES  # run when named


def test_gain_ratios_and_ceilings() -> None:
    def pol(gain: float, ratio: float) -> dict[str, float]:
        return {"service_gain": gain, "service_gain_ratio": ratio}

    out = {
        "tempo": pol(6.0, 0.6),
        "polyserve": pol(5.0, 0.5),
        "least-request": pol(4.0, 0.4),
        "least-request+edf": pol(4.8, 0.48),
    }
    r = bench.gain_ratios(out)  # type: ignore[arg-type]
    assert r["tempo_vs_least_request"] == pytest.approx(1.5)
    assert r["tempo_vs_polyserve"] == pytest.approx(1.2)
    assert r["tempo_vs_least_request_edf"] == pytest.approx(1.25)
    assert r["ceiling_vs_least_request"] == pytest.approx(2.5)
    assert r["ceiling_vs_polyserve"] == pytest.approx(2.0)
    assert bench.gain_ratios({"tempo": pol(6.0, 0.6)})["ceiling_vs_polyserve"] is None
