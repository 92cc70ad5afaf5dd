"""What the scaler exports: the Prometheus families parse with the reference parser and
carry the scaler's own numbers; the KEDA ScaledObjects and the Grafana dashboard in
deploy/ use metric names and tiers that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from slorouter.config import load_config
from slorouter.metrics.autoscale import Family, autoscale_families, to_metric
from tests.unit.test_autoscale_rules import T20, T50, Rig

ROOT = Path(__file__).resolve().parents[2]


def scaled_rig() -> Rig:
    rig = Rig({"a": "t20", "b": "t50", "c": "t50"}, {"idle_s": 5.0}, busy={"a"})
    rig.run({T20: 60.0, T50: 0.0}, 20)
    rig.scaler.on_defer("t20", rig.clock.now())
    rig.run({T20: 60.0}, 1)
    return rig


class _Fixed(Collector):
    def __init__(self, fams: list[Family]) -> None:
        self.fams = fams

    def collect(self):  # type: ignore[no-untyped-def]
        return [to_metric(f) for f in self.fams]


def exposition(fams: list[Family]) -> str:
    """The families through prometheus_client's own text exposition."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(fams))
    return generate_latest(reg).decode()


def test_families_parse_and_carry_the_scalers_numbers() -> None:
    rig = scaled_rig()
    sc = rig.scaler
    fams = autoscale_families(sc, rig.clock.now(), advisory=False, webhook={"delivered": 3, "failed": 1})
    text = exposition(fams)
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    by = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parsed.values() for s in f.samples}
    st = sc.tiers["t20"]
    assert st.desired is not None and st.desired > 1
    assert by[("slorouter_autoscale_desired_servers", (("tier", "t20"),))] == st.desired
    assert by[("slorouter_autoscale_current_servers", (("tier", "t20"),))] == st.current == rig.count("t20")
    assert by[("slorouter_autoscale_needed_servers", (("tier", "t20"),))] == st.need
    assert by[("slorouter_autoscale_headroom_servers", (("tier", "t20"),))] == st.headroom
    assert by[("slorouter_autoscale_arrival_rate", (("tier", "t20"),))] == st.rate.level
    assert by[("slorouter_autoscale_deferrals_total", (("tier", "t20"),))] == 1
    assert by[("slorouter_autoscale_attainment_ratio", (("tier", "t20"),))] == 0.0  # none dispatched
    assert by[("slorouter_autoscale_decisions_total", (("kind", "in"), ("tier", "t50")))] >= 1  # released c
    assert by[("slorouter_autoscale_webhook_total", (("result", "failed"),))] == 1
    assert by[("slorouter_autoscale_advisory", ())] == 0
    assert parsed["slorouter_autoscale_deferrals"].type == "counter"


def test_keda_scaled_objects_read_the_desired_servers_of_every_example_tier() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "keda" / "scaledobjects.yaml").read_text()))
    tiers = {t.name for t in load_config(ROOT / "config" / "example.yaml", env={}).tiers}
    seen = set()
    for d in docs:
        assert d["kind"] == "ScaledObject" and d["apiVersion"] == "keda.sh/v1alpha1"
        (trig,) = d["spec"]["triggers"]
        assert trig["type"] == "prometheus" and trig["metricType"] == "AverageValue"
        assert trig["metadata"]["threshold"] == "1"  # replicas = ceil(desired / 1)
        m = re.fullmatch(
            r'max\(slorouter_autoscale_desired_servers\{tier="([^"]+)"\}\)', trig["metadata"]["query"]
        )
        assert m is not None
        seen.add(m.group(1))
        assert d["spec"]["scaleTargetRef"]["name"] == f"vllm-{m.group(1)}"
    assert seen == tiers
    dep = yaml.safe_load((ROOT / "deploy" / "keda" / "engine-deployment.yaml").read_text())
    hooks = json.dumps(dep["spec"]["template"]["spec"]["containers"][0]["lifecycle"])
    assert "/admin/backends" in hooks and "wait_s=" in hooks


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "slorouter-autoscale.json").read_text())
    rig = scaled_rig()
    names = {f.name for f in autoscale_families(rig.scaler, rig.clock.now(), advisory=True, webhook={})}
    used = set()
    for p in dash["panels"]:
        for t in p["targets"]:
            used |= set(re.findall(r"slorouter_[a-z_]+", t["expr"]))
    assert used and used <= names, used - names
    assert {"slorouter_autoscale_desired_servers", "slorouter_autoscale_attainment_ratio"} <= used
