"""``slorouter scaler-sim`` refuses what it cannot work with, saying what to do."""

from __future__ import annotations

import pytest

from slorouter.cli import main


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        ({}, [], "set SLOROUTER_ADMIN_TOKEN to the router's admin token"),
        ({"SLOROUTER_ADMIN_TOKEN": "t"}, [], "set SLOROUTER_WEBHOOK_SECRET to the webhook secret"),
        (
            {"SLOROUTER_ADMIN_TOKEN": "t", "SLOROUTER_WEBHOOK_SECRET": "s"},
            ["--listen", "8090"],
            "--listen: give HOST:PORT",
        ),
        (
            {"SLOROUTER_ADMIN_TOKEN": "t", "SLOROUTER_WEBHOOK_SECRET": "s"},
            ["--profile", "h200"],
            "--profile: unknown profile",
        ),
        (
            {"A": "t", "SLOROUTER_WEBHOOK_SECRET": "s"},
            ["--admin-token-env", "A", "--max-engines", "0"],
            "--max-engines >= 1",
        ),
        (  # a second replica of the router, given without its scheme
            {"SLOROUTER_ADMIN_TOKEN": "t", "SLOROUTER_WEBHOOK_SECRET": "s"},
            ["--router", "127.0.0.1:8081"],
            "--router: give the router's base URL",
        ),
    ],
)
def test_bad_setup_is_a_clear_error(
    env: dict[str, str],
    args: list[str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for var in ("SLOROUTER_ADMIN_TOKEN", "SLOROUTER_WEBHOOK_SECRET", "A"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["scaler-sim", "--router", "http://127.0.0.1:8080", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slorouter scaler-sim: ") and says in err
