"""Processes for :mod:`benchmarks.overhead.bench`: simulated engines, nginx and slorouter as
subprocesses (optionally pinned to a core with ``taskset``), their CPU time and RSS from
``/proc``, and a clean stop (SIGTERM, then SIGKILL after a grace period) of every process
started here — and only those.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.ports import free_port, free_port_range

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
VENV_BIN = Path(sys.executable).parent


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of a process (all its threads), from /proc/PID/stat: CPU in
    all, and the part spent in the kernel (system calls: socket reads and writes, epoll)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / CLK_TCK, stime / CLK_TCK


def sched_ns(pid: int) -> tuple[int, int]:
    """(time run on a CPU, time runnable but waiting for one) of every live thread of a
    process [ns], from /proc/PID/task/*/schedstat. The first is the same quantity as
    utime+stime, at ns resolution instead of 1/CLK_TCK (threads that already exited are
    not counted); the second shows how much the shared machine starved the process."""
    run = wait = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with (
            contextlib.suppress(FileNotFoundError, ProcessLookupError),
            open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f,
        ):
            a, b = f.read().split()[:2]
            run += int(a)
            wait += int(b)
    return run, wait


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


class Proc:
    """One subprocess started by this script; ``pids()`` = it and (for nginx) its workers."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, core: int | None) -> None:
        self.name = name
        if core is not None:
            argv = ["taskset", "-c", str(core), *argv]
        self.log = log_dir / f"{name}.log"
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT)
        self.with_children = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        return [self.pid, *children(self.pid)] if self.with_children else [self.pid]

    def cpu(self) -> tuple[float, float, float, float]:
        """(utime+stime from /proc/PID/stat, run time and run-queue wait from schedstat,
        stime from /proc/PID/stat) in seconds, summed over the process and its workers."""
        stat = sys_ = 0.0
        run = wait = 0
        for p in self.pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total, kernel = cpu_seconds(p)
                stat += total
                sys_ += kernel
                r, w = sched_ns(p)
                run += r
                wait += w
        return stat, run / 1e9, wait / 1e9, sys_

    def rss(self) -> float:
        total = 0.0
        for p in self.pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += rss_mb(p)
        return total

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._logf.close()


def wait_http(proc: Proc, url: str, timeout_s: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; fail with the process's log if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout_s:g} s:\n{proc.tail()}")


def profile_json(c0_s: float) -> str:
    """A simulated-engine profile whose step is ``c0_s`` whatever the batch, KV or prefill."""
    step: dict[str, Any] = {"c0_s": c0_s, "c_batch_s": 0.0, "c_kv_s": 0.0, "c_prefill_s": 0.0}
    prof: dict[str, Any] = {"format": "slorouter-profile/1", "name": f"bench-{c0_s:g}s", "engine": "vllm"}
    prof.update({"model": "bench", "source": "default", "step": step, "max_num_seqs": 256})
    prof.update({"kv_capacity_tokens": 1_048_576, "max_batched_tokens": 65_536})
    return json.dumps(prof) + "\n"


def start_sim(tmp: Path, tag: str, c0_s: float, engines: int, core: int | None) -> tuple[Proc, list[int]]:
    prof = tmp / f"profile-{tag}.json"
    prof.write_text(profile_json(c0_s))
    base = free_port_range(engines)
    argv = [str(VENV_BIN / "slorouter"), "sim", "--engines", str(engines), "--base-port", str(base)]
    argv += ["--profile", str(prof)]
    p = Proc(f"sim-{tag}", argv, tmp, core)
    ports = list(range(base, base + engines))
    for port in ports:
        wait_http(p, f"http://127.0.0.1:{port}/health")
    return p, ports


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream engines {{
{servers}
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://engines;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def start_nginx(tmp: Path, engine_ports: list[int], core: int | None) -> tuple[Proc, int]:
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        raise RuntimeError("nginx is not installed: run `apt-get install -y nginx` (or pass --skip-nginx)")
    port = free_port()
    d = tmp / f"nginx-{port}"
    d.mkdir()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in engine_ports)
    conf = d.parent / f"{d.name}.conf"
    conf.write_text(NGINX_CONF.format(tmp=d, servers=servers, port=port))
    p = Proc(d.name, [exe, "-p", str(d), "-e", str(d / "nginx-error.log"), "-c", str(conf)], tmp, core)
    p.with_children = True  # CPU and RSS: master + worker
    wait_http(p, f"http://127.0.0.1:{port}/health")
    return p, port


# the tier and policy of the `slorouter-polyserve` target: a latency tier both engines serve
POLYSERVE_TIER = "{name: chat, class: latency, ttft_ms: 2000, tpot_ms: 100}"


def start_slorouter(
    tmp: Path,
    engine_ports: list[int],
    core: int | None,
    policy: str = "round-robin",
    source: Path | None = None,
) -> tuple[Proc, int]:
    """``slorouter serve``: ``round-robin`` with one best-effort tier, or ``polyserve``
    with one latency tier (TTFT 2 s, TPOT 100 ms) whose bin holds both engines.
    ``source``: run the ``slorouter`` package of that source tree (e.g. a git worktree of
    another commit) with this environment's dependencies, instead of the installed one."""
    port = free_port()
    tier, name = (
        ("{name: bench, class: best_effort}", "bench")
        if policy == "round-robin"
        else (POLYSERVE_TIER, "chat")
    )
    backends = "\n".join(
        f'  - {{name: e{i}, url: "http://127.0.0.1:{p}", tier: {name}}}' for i, p in enumerate(engine_ports)
    )
    cfg = tmp / f"slorouter-{port}.yaml"
    cfg.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"tiers:\n  - {tier}\n"
        f"backends:\n{backends}\n"
        "routing: {allow_anonymous: true}\n"
        f"policy: {{kind: {policy}}}\n"
    )
    if source is None:
        argv = [str(VENV_BIN / "slorouter")]
    else:
        tree = str(source.resolve())
        code = f"import sys; sys.path.insert(0, {tree!r}); from slorouter.cli import main; sys.exit(main())"
        argv = [sys.executable, "-c", code]
    argv += ["serve", "--config", str(cfg), "--log-level", "warning"]
    p = Proc(f"slorouter-{policy}{'-base' if source else ''}-{port}", argv, tmp, core)
    wait_http(p, f"http://127.0.0.1:{port}/health")
    return p, port


def start_vllm_router(tmp: Path, engine_ports: list[int], core: int | None) -> tuple[Proc, int]:
    """The Rust vllm-router (PyPI ``vllm-router``, the ``bench`` extra): round-robin over
    the engines, logs at warning, its Prometheus endpoint on a free port of 127.0.0.1."""
    exe = VENV_BIN / "vllm-router"
    if not exe.exists():
        raise RuntimeError(
            "vllm-router is not installed: run scripts/bench_overhead.sh (it installs the `bench` "
            "extra), or pip install -e '.[bench]' (or pass --skip-vllm-router)"
        )
    port, prom = free_port(), free_port()
    argv = [str(exe), "--worker-urls", *(f"http://127.0.0.1:{p}" for p in engine_ports)]
    argv += ["--policy", "round_robin", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", "warning", "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom)]
    p = Proc(f"vllm-router-{port}", argv, tmp, core)
    wait_http(p, f"http://127.0.0.1:{port}/health")
    return p, port


def start_passthrough(tmp: Path, engine_ports: list[int], core: int | None) -> tuple[Proc, int]:
    """The minimal aiohttp + uvloop pass-through (:mod:`benchmarks.overhead.passthrough`)."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.overhead.passthrough", "--port", str(port)]
    for ep in engine_ports:
        argv += ["--upstream", f"http://127.0.0.1:{ep}"]
    p = Proc(f"aiohttp-min-{port}", argv, tmp, core)
    wait_http(p, f"http://127.0.0.1:{port}/health")
    return p, port
