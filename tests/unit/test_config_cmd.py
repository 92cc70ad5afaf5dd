"""``slorouter config check`` / ``config schema`` and the reusable ``check_file``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from slorouter.cli import main
from slorouter.config import json_schema
from slorouter.policy import registry
from slorouter.tools.config_cmd import check_file

ROOT = Path(__file__).resolve().parents[2]
GOOD: dict[str, Any] = {
    "tiers": [{"name": "t", "class": "latency", "ttft_ms": 1000, "tpot_ms": 50}],
    "backends": [{"url": "http://127.0.0.1:8001"}, {"url": "http://127.0.0.1:8002"}],
    "policy": {"kind": "least-request"},
    "routing": {"allow_anonymous": True},
}


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_check_file_accepts_the_example() -> None:
    assert check_file(str(ROOT / "config" / "example.yaml")) == []


def test_unknown_policy_kind(tmp_path: Path) -> None:
    p = write(tmp_path, {**GOOD, "policy": {"kind": "least-requests"}})
    (line,) = check_file(str(p))
    assert line.startswith(
        f"{p}: policy.kind: unknown policy 'least-requests' (did you mean 'least-request'?)"
    )
    for kind in registry.kinds():
        assert kind in line  # lists the known kinds


def test_bad_policy_params_are_reported_with_their_path(tmp_path: Path) -> None:
    p = write(tmp_path, {**GOOD, "policy": {"kind": "random", "params": {"seed": "x", "colour": 1}}})
    lines = check_file(str(p))
    assert f"{p}: policy.params.seed: must be an integer, got str" in lines
    assert f"{p}: policy.params.colour: unknown parameter" in lines
    assert len(lines) == 2


def test_config_and_policy_errors_are_listed_together(tmp_path: Path) -> None:
    data = {**GOOD, "server": {"port": -1}, "policy": {"kind": "round-robin", "params": {"x": 1}}}
    lines = check_file(str(write(tmp_path, data)))
    assert [line.split(": ")[1] for line in lines] == ["server.port", "policy.params.x"]


def test_cli_check_ok_and_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, GOOD)
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"OK: {good} (1 tiers, 2 backends, policy least-request)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: []\nbackends: [{url: 'nope'}]\n")
    assert main(["config", "check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK: ")
    assert f"{bad}: tiers: must have at least 1 item" in out
    assert any(line.startswith(f"{bad}: backends[0].url: must be an http:// or https:// URL") for line in out)
    assert any(line.startswith(f"{bad}: routing.allow_anonymous: no request could be served") for line in out)
    assert out[-1] == f"FAILED: {bad} (3 errors)"


def test_cli_schema_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_cli_check_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["config", "check"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err
