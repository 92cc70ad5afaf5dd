"""The system under fuzzing, as real processes on 127.0.0.1: a simulated vLLM engine and
a simulated TGI engine (fast steps, short outputs), and ``slorouter serve`` in front of
them with API keys, aliases, admin token and tight client limits."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.children import router_port, start_router, stop_all, wait_listening
from benchmarks.ports import free_port
from slorouter.models.profile import StepProfile
from slorouter.models.static import LinearStep

ADMIN_ENV = "FUZZ_SLOROUTER_ADMIN"


@dataclass
class Stack:
    port: int
    router: subprocess.Popen[bytes]
    engines: list[subprocess.Popen[bytes]]
    engine_ports: list[int]
    log: Path  # the router's stderr

    def router_log(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def fuzz_stack() -> Iterator[Stack]:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="slorouter-fuzz-") as d:
        tmp = Path(d)
        StepProfile(
            name="fuzz-fast",
            engine="vllm",
            model="tiny",
            source="default",
            step=LinearStep(c0_s=0.0005, c_batch_s=0.00002, c_kv_s=0.0, c_prefill_s=1e-6),
            max_num_seqs=256,
            kv_capacity_tokens=65_536,
            max_batched_tokens=2048,
        ).save(tmp / "fast.json")
        ports = [free_port(), free_port()]
        try:
            for port, engine in zip(ports, ("vllm", "tgi"), strict=True):
                cmd = [
                    sys.executable,
                    "-m",
                    "slorouter.cli",
                    "sim",
                    "--engines",
                    "1",
                    "--base-port",
                    str(port),
                ]
                cmd += ["--engine", engine, "--profile", str(tmp / "fast.json"), "--max-model-len", "512"]
                cmd += ["--eos-mean", "16"]
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for port, p in zip(ports, procs, strict=True):
                wait_listening(port, p)
            cfg = {
                "server": {"host": "127.0.0.1", "client_read_timeout_s": 1.0, "max_body_bytes": 65536},
                "tiers": [
                    {"name": "interactive", "class": "latency", "ttft_ms": 1000, "tpot_ms": 50},
                    {"name": "standard", "class": "latency", "ttft_ms": 5000, "tpot_ms": 150},
                    {"name": "batch", "class": "best_effort"},
                ],
                "backends": [
                    {
                        "name": "vllm",
                        "url": f"http://127.0.0.1:{ports[0]}",
                        "engine": "vllm",
                        "tier": "standard",
                    },
                    {
                        "name": "tgi",
                        "url": f"http://127.0.0.1:{ports[1]}",
                        "engine": "tgi",
                        "tier": "standard",
                    },
                ],
                "routing": {
                    "default_tier": "standard",
                    "allow_anonymous": True,
                    "anonymous_tiers": ["standard", "batch"],
                    "keys": [
                        {"name": "fuzz", "key": "sk-fuzz-key", "tiers": ["interactive", "standard", "batch"]}
                    ],
                    "aliases": {"fast": {"model": "sim-llama", "tier": "interactive"}},
                },
                "policy": {"kind": "least-request"},
                "admin": {"token_env": ADMIN_ENV},
                "health": {"interval_s": 1.0},
            }
            (tmp / "router.yaml").write_text(yaml.safe_dump(cfg))
            env = {**os.environ, ADMIN_ENV: "fuzz-admin-token"}
            log = tmp / "router.log"
            with log.open("wb") as err:
                router = start_router(tmp / "router.yaml", log_level="error", stderr=err, env=env)
            procs.append(router)
            yield Stack(router_port(router), router, procs[:2], ports, log)
        finally:
            stop_all(procs)
