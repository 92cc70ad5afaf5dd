"""matplotlib is the optional ``plots`` extra: without it, ``--plot`` is refused before
anything runs (no connection, no load), with what to install; without ``--plot`` the
load generator does not need it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "config" / "workloads" / "smoke.yaml")


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import matplotlib`` fails, as in an install without the extra."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--workload", SMOKE, "--requests", "1", "--plot", "PLOTS"],
        ["sweep", "--workload", SMOKE, "--requests", "1", "--rates", "1", "--plot", "PLOTS"],
        ["report", "no-such-results.json", "--plot", "PLOTS"],
    ],
)
def test_plot_without_matplotlib_says_what_to_install_before_running(
    argv: list[str], no_matplotlib: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a target that counts connections: there must be none
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.setblocking(False)
        target = f"http://127.0.0.1:{s.getsockname()[1]}"
        plots = str(tmp_path / "plots")
        args = [plots if a == "PLOTS" else a for a in argv]
        if argv[0] != "report":
            args += ["--target", target, "--no-progress"]
        assert main(args) == 2
        with pytest.raises(BlockingIOError):
            s.accept()
    err = " ".join(capsys.readouterr().err.split())
    assert "--plot needs matplotlib" in err and "pip install 'slorouter[plots]'" in err
    assert not Path(plots).exists()


def test_no_module_needs_the_extras_to_import() -> None:
    """Every module of slorouter and loadgen imports without touching matplotlib (the
    ``plots`` extra) or openai (``dev``): a core install runs the router, the
    simulators and the load generator."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import slorouter, loadgen\n"
        "for pkg in (slorouter, loadgen):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'openai'))\n"
        "print(len([m for m in sys.modules if m.startswith(('slorouter.', 'loadgen.'))]), bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    count, bad = out.stdout.split(" ", 1)
    assert int(count) > 60 and bad.strip() == "[]"
