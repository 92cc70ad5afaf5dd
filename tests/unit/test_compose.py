"""docker-compose.yml, checked without a Docker engine: the file parses, every slorouter
command in it exists and its flags are accepted by that subcommand's parser, the mounted
router configs are valid, and their ports and backend URLs agree with the services; the
replicas profile's routers share one config whose store is the profile's Redis, and its
load balancer's config (deploy/compose/haproxy.cfg) sends to exactly those routers."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from slorouter.cli import COMMANDS, build_parser
from slorouter.tools.config_cmd import check

ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose variable interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(3)
            return env.get(name) or (m.group(2) or "")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(raw, dict) and isinstance(raw.get("services"), dict)
    out = interpolate(raw, env={})
    assert isinstance(out, dict)
    return out


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def dockerfile_cmd() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    m = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert m, "the Dockerfile needs an exec-form CMD"
    return list(yaml.safe_load(m.group(1)))


def slorouter_commands(compose: dict[str, Any]) -> list[tuple[str, list[str]]]:
    out = [(name, command(s)) for name, s in services(compose).items() if command(s)[:1] == ["slorouter"]]
    return [*out, ("Dockerfile CMD", dockerfile_cmd())]


def assert_cli_accepts(argv: list[str], where: str) -> Any:
    assert argv and argv[0] in COMMANDS, (
        f"{where}: no slorouter subcommand {argv[:1]} (have {list(COMMANDS)})"
    )
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser(argv).parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"{where}: `slorouter {' '.join(argv)}` is refused:\n{err.getvalue()}") from e


def test_compose_parses_and_every_service_runs_something(compose: dict[str, Any]) -> None:
    assert services(compose)
    for name, svc in services(compose).items():
        assert "image" in svc or "build" in svc, name
        assert svc.get("profiles"), f"{name}: every service belongs to the gpu, sim or replicas profile"
        assert set(svc["profiles"]) <= {"gpu", "sim", "replicas"}, name
    for vol in (v.split(":")[0] for s in services(compose).values() for v in s.get("volumes", [])):
        assert vol.startswith(".") or vol in (compose.get("volumes") or {}), f"undeclared volume {vol}"


def test_every_slorouter_command_exists_with_accepted_flags(compose: dict[str, Any]) -> None:
    cmds = slorouter_commands(compose)
    used = {argv[1] for _, argv in cmds}
    assert {"serve", "sim"} <= used
    for where, argv in cmds:
        assert_cli_accepts(argv[1:], where)


def _mounted(svc: dict[str, Any], container_path: str) -> Path:
    target = PurePosixPath(container_path)
    for v in svc.get("volumes", []):
        host, cont, *_ = v.split(":")
        if target.is_relative_to(cont):
            return Path(ROOT, str(host), str(target.relative_to(cont)))
    raise AssertionError(f"{container_path} is not mounted into the service")


def _listening_ports(svc: dict[str, Any]) -> set[int]:
    """Ports a backend service listens on, read from its command line."""
    cmd = command(svc)

    def flag(name: str, default: str) -> str:
        return cmd[cmd.index(name) + 1] if name in cmd else default

    if cmd[:2] == ["slorouter", "sim"]:
        args = assert_cli_accepts(cmd[1:], "sim")
        base = int(getattr(args, "base_port", flag("--base-port", "8001")))
        n = int(getattr(args, "engines", flag("--engines", "1")))
        return set(range(base, base + n))
    return {int(flag("--port", "8000"))}  # vllm/vllm-openai: --port, default 8000


def _routers(compose: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(n, s) for n, s in services(compose).items() if command(s)[:2] == ["slorouter", "serve"]]


def test_gpu_and_sim_have_one_router_and_replicas_several_alike(compose: dict[str, Any]) -> None:
    profiles = [p for _, s in _routers(compose) for p in s["profiles"]]
    assert profiles.count("gpu") == profiles.count("sim") == 1
    replicas = [s for _, s in _routers(compose) if "replicas" in s["profiles"]]
    assert len(replicas) >= 2
    assert all(command(s) == command(replicas[0]) for s in replicas)  # one logical router


@pytest.mark.parametrize("profile", ["gpu", "sim"])
def test_mounted_config_is_valid_and_agrees_with_services(compose: dict[str, Any], profile: str) -> None:
    name, router = next((n, s) for n, s in _routers(compose) if profile in s["profiles"])
    args = assert_cli_accepts(command(router)[1:], name)
    path = _mounted(router, args.config)
    cfg, errors = check(str(path))
    assert errors == [] and cfg is not None, errors
    # the router listens where the published port points
    assert cfg.server.host == "0.0.0.0", "inside a container the router must bind every interface"
    published = {int(str(p).rsplit(":", 1)[1]) for p in router.get("ports", [])}
    assert published == {cfg.server.port}
    # every backend is a service of the same profile, on a port that service listens on
    peers = {n: s for n, s in services(compose).items() if profile in s["profiles"]}
    deps = set(router.get("depends_on", []))
    for i, b in enumerate(cfg.backends):
        u = urlsplit(b.url)
        assert u.hostname in peers, f"{path}: backends[{i}].url host {u.hostname} is not a {profile} service"
        assert u.port in _listening_ports(peers[u.hostname]), f"{path}: backends[{i}].url port {u.port}"
        assert u.hostname in deps, f"{name} should depend_on {u.hostname}"
    # and every engine service is used by the router
    engines = {n for n, s in peers.items() if command(s)[:2] != ["slorouter", "serve"]}
    assert engines == {urlsplit(b.url).hostname for b in cfg.backends}


def test_gpu_engines_are_official_vllm_with_gpu_reservations_and_model_from_env() -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gpu = {n: s for n, s in raw["services"].items() if "gpu" in s["profiles"] and "image" in s}
    engines = {n: s for n, s in gpu.items() if "vllm/vllm-openai" in s["image"]}
    assert len(engines) >= 2
    for name, s in engines.items():
        devices = s["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d.get("capabilities", []) for d in devices), name
        cmd = command(s)
        assert "--model" in cmd and cmd[cmd.index("--model") + 1].startswith("${MODEL:-"), name


def test_sim_profile_runs_slorouter_sim_from_the_project_image(compose: dict[str, Any]) -> None:
    sims = [s for s in services(compose).values() if command(s)[:2] == ["slorouter", "sim"]]
    assert sims and all("build" in s and set(s["profiles"]) <= {"sim", "replicas"} for s in sims)
    assert not any("deploy" in s for s in sims)  # CPU only


def test_dockerfile_builds_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install \.", text)
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    cmd = dockerfile_cmd()
    assert cmd[:2] == ["slorouter", "serve"]
    assert_cli_accepts(cmd[1:], "Dockerfile CMD")


def _haproxy(path: Path) -> dict[str, list[list[str]]]:
    """haproxy.cfg as section header -> its lines, split into words (comments dropped)."""
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for raw in path.read_text().splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if not raw[0].isspace():
            current = sections.setdefault(" ".join(words), [])
        else:
            current.append(words)
    return sections


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", text)
    assert m, text
    return int(m.group(1)) * units[m.group(2) or "ms"]


def test_replicas_share_a_store_of_their_profile_behind_a_tcp_balancer(compose: dict[str, Any]) -> None:
    peers = {n: s for n, s in services(compose).items() if "replicas" in s["profiles"]}
    routers = {n: s for n, s in _routers(compose) if "replicas" in s["profiles"]}
    name, first = next(iter(routers.items()))
    args = assert_cli_accepts(command(first)[1:], name)
    path = _mounted(first, args.config)
    cfg, errors = check(str(path))
    assert errors == [] and cfg is not None, errors
    assert cfg.server.host == "0.0.0.0"
    # the store: a Redis service of this profile, without persistence, on the URL's port
    sync = cfg.state.sync
    assert sync.kind.value == "redis" and sync.url is not None
    store = urlsplit(sync.url)
    assert store.hostname in peers, f"{path}: state.sync.url host {store.hostname} is not a replicas service"
    redis = peers[store.hostname]
    rcmd = command(redis)
    assert rcmd[:1] == ["redis-server"] and (store.port or 6379) == int(
        rcmd[rcmd.index("--port") + 1] if "--port" in rcmd else 6379
    )
    assert rcmd[rcmd.index("--save") + 1] == "" and rcmd[rcmd.index("--appendonly") + 1] == "no"
    # every replica: the same config, depends on the store and every engine it uses, and
    # outlives its own drain when stopped
    engines = {urlsplit(b.url).hostname for b in cfg.backends}
    for n, s in routers.items():
        assert set(s["depends_on"]) >= engines | {store.hostname}, n
        grace = s.get("stop_grace_period", "10s")
        assert _seconds(grace) > cfg.server.shutdown_grace_s, f"{n}: stop_grace_period {grace}"
    # the balancer: HAProxy in TCP mode, publishes the router port, sends to exactly the replicas
    lbs = [(n, s) for n, s in peers.items() if "haproxy" in str(s.get("image", ""))]
    assert len(lbs) == 1
    lb_name, lb = lbs[0]
    conf = _haproxy(_mounted(lb, "/usr/local/etc/haproxy/haproxy.cfg"))
    defaults = {w[0]: w[1:] for w in conf["defaults"]}
    assert defaults["mode"] == ["tcp"]
    timeouts = {w[1]: _seconds(w[2]) for w in conf["defaults"] if w[0] == "timeout"}
    assert timeouts["client"] >= 600 and timeouts["server"] >= 600  # streams are long: never cut them
    front = next(v for k, v in conf.items() if k.startswith("frontend"))
    (bind,) = [w[1] for w in front if w[0] == "bind"]
    published = {int(str(p).rsplit(":", 1)[1]) for p in lb.get("ports", [])}
    assert published == {int(bind.rsplit(":", 1)[1])}
    back = next(v for k, v in conf.items() if k.startswith("backend"))
    servers = {w[2] for w in back if w[0] == "server"}
    assert servers == {f"{n}:{cfg.server.port}" for n in routers}
    assert ["option", "httpchk", "GET", "/health"] in back
    assert set(lb["depends_on"]) == set(routers), lb_name
