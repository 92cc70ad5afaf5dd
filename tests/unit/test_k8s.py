"""deploy/k8s, checked without a cluster: every manifest parses and is listed in the
kustomization; the router config in the ConfigMap is valid and shares its load picture
through the Redis Service of these manifests; the Deployment runs several replicas whose
command the CLI accepts, reads the config where the ConfigMap is mounted, listens where
the Service and the probes point, and outlives its own drain; the backends are the pods
of the simulated-engine StatefulSet, on the port they listen on."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from slorouter.tools.config_cmd import check
from tests.unit.test_compose import assert_cli_accepts

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest, by (kind, name); each file is listed in the kustomization."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name in files:
        for d in yaml.safe_load_all((K8S / name).read_text()):
            if d is None:
                continue
            key = (d["kind"], d["metadata"]["name"])
            assert key not in out, f"{name}: {key} twice"
            out[key] = d
    return out


def container(d: dict[str, Any]) -> dict[str, Any]:
    (c,) = d["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def port_named(c: dict[str, Any], name: str | int) -> int:
    if isinstance(name, int):
        return name
    (p,) = [p["containerPort"] for p in c["ports"] if p.get("name") == name]
    return int(p)


def selects(svc: dict[str, Any], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    sel = svc["spec"]["selector"]
    return all(labels.get(k) == v for k, v in sel.items())


@pytest.fixture(scope="module")
def router_cfg(docs: dict[tuple[str, str], dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    cm = docs[("ConfigMap", "slorouter-config")]
    (key,) = cm["data"]
    path = tmp_path_factory.mktemp("k8s") / key
    path.write_text(cm["data"][key])
    cfg, errors = check(str(path))
    assert errors == [] and cfg is not None, errors
    return cfg


def test_the_deployment_runs_replicas_of_the_configmaps_router(
    docs: dict[tuple[str, str], dict[str, Any]], router_cfg: Any
) -> None:
    dep = docs[("Deployment", "slorouter")]
    assert dep["spec"]["replicas"] >= 2
    assert (
        dep["spec"]["selector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    c = container(dep)
    args = assert_cli_accepts(c["args"][1:], "router Deployment")
    assert c["args"][:2] == ["slorouter", "serve"] and getattr(args, "workers", 1) in (1, "1", None)
    # the config is read where the ConfigMap is mounted
    (mount,) = c["volumeMounts"]
    (vol,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert vol["configMap"]["name"] == "slorouter-config"
    (key,) = docs[("ConfigMap", "slorouter-config")]["data"]
    assert args.config == f"{mount['mountPath']}/{key}"
    # it listens where the Service, the probes and the scrape annotation point
    cfg = router_cfg
    assert cfg.server.host == "0.0.0.0"
    svc = docs[("Service", "slorouter")]
    assert selects(svc, dep)
    (sp,) = svc["spec"]["ports"]
    assert port_named(c, sp["targetPort"]) == cfg.server.port
    ready = c["readinessProbe"]["httpGet"]
    assert ready["path"] == "/health" and port_named(c, ready["port"]) == cfg.server.port
    assert "httpGet" not in c["livenessProbe"]  # engines being down must not restart routers
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == cfg.server.port and ann["prometheus.io/path"] == "/metrics"
    # SIGTERM: in-flight streams get shutdown_grace_s, after the preStop pause
    pause = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert (
        dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > cfg.server.shutdown_grace_s + pause
    )
    pdb = docs[("PodDisruptionBudget", "slorouter")]
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_the_replicas_share_their_picture_through_the_redis_service(
    docs: dict[tuple[str, str], dict[str, Any]], router_cfg: Any
) -> None:
    sync = router_cfg.state.sync
    assert sync.kind.value == "redis" and sync.url is not None
    u = urlsplit(sync.url)
    svc = docs[("Service", u.hostname)]
    redis = docs[("Deployment", "slorouter-redis")]
    assert selects(svc, redis)
    (sp,) = svc["spec"]["ports"]
    assert sp["port"] == (u.port or 6379)
    c = container(redis)
    assert port_named(c, sp["targetPort"]) == 6379
    args = c["args"]
    assert args[0] == "redis-server"  # no persistence: rows live half a second
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"


def test_the_backends_are_the_simulated_engine_pods(
    docs: dict[tuple[str, str], dict[str, Any]], router_cfg: Any
) -> None:
    sts = docs[("StatefulSet", "slorouter-sim")]
    svc = docs[("Service", sts["spec"]["serviceName"])]
    assert svc["spec"]["clusterIP"] == "None" and selects(svc, sts)
    c = container(sts)
    args = assert_cli_accepts(c["args"][1:], "sim StatefulSet")
    assert args.engines == 1 and args.host == "0.0.0.0"
    assert port_named(c, "http") == args.base_port
    pods = {
        f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}" for i in range(sts["spec"]["replicas"])
    }
    used = {(urlsplit(b.url).hostname, urlsplit(b.url).port) for b in router_cfg.backends}
    assert used == {(p, args.base_port) for p in pods}
