"""``slorouter sim``: serve N simulated engines on consecutive ports from one process.

Defaults match ``config/example.yaml``: 4 engines on 127.0.0.1:8001..8004, model
``sim-llama``, vLLM's OpenAI API, profile ``h100-8b``. Stop with Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from slorouter.engine.profiles import BUILTIN_PROFILES, DEFAULT_PROFILE, load_profile
from slorouter.engine.waiting import SCHEDULING
from slorouter.models.profile import ProfileError, StepProfile
from slorouter.simengine.server import serve_engines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engines", type=int, default=4, help="number of engines (default 4)")
    p.add_argument("--base-port", type=int, default=8001, help="port of the first engine (default 8001)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=f"built-in profile ({', '.join(BUILTIN_PROFILES)}) or a profile JSON file "
        f"(default {DEFAULT_PROFILE})",
    )
    p.add_argument("--engine", choices=("vllm", "tgi"), default="vllm", help="API to speak (default vllm)")
    p.add_argument("--model", default="sim-llama", help="served model name (default sim-llama)")
    p.add_argument("--seed", type=int, default=0, help="seed: same seed, same answers (default 0)")
    p.add_argument(
        "--eos-mean",
        type=float,
        default=256.0,
        help="mean output length when a request does not set ignore_eos [tokens] (default 256)",
    )
    p.add_argument("--max-model-len", type=int, default=8192, help="context length [tokens] (default 8192)")
    p.add_argument(
        "--noise", type=float, default=0.0, help="log-normal sigma of step-time noise (default 0: exact)"
    )
    p.add_argument(
        "--scheduling-policy",
        choices=SCHEDULING,
        default="fcfs",
        help="the waiting queue, as vLLM's flag: fcfs (default) or priority (each request's "
        "`priority` field, lower first; the lowest-priority running request is preempted first)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer KEY` on the /v1 routes (401 without it), as vLLM's "
        "--api-key does (vllm engines only; default: no key)",
    )


def _check(args: argparse.Namespace) -> StepProfile | str:
    if not 1 <= args.engines <= 1024:
        return "--engines: give a number from 1 to 1024"
    if args.base_port < 1 or args.base_port + args.engines - 1 > 65535:
        return f"--base-port: ports {args.base_port}..{args.base_port + args.engines - 1} are not all valid"
    if args.eos_mean < 1:
        return "--eos-mean: must be >= 1"
    if args.max_model_len < 2:
        return "--max-model-len: must be >= 2"
    if args.noise < 0:
        return "--noise: must be >= 0"
    if args.api_key is not None and (args.engine != "vllm" or not args.api_key):
        return "--api-key: give a non-empty key, with --engine vllm (the TGI simulator has no keys)"
    try:
        return load_profile(args.profile)
    except ProfileError as e:
        return f"--profile: {e}"


async def _serve(args: argparse.Namespace, profile: StepProfile) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with serve_engines(
        args.engines,
        profile=profile,
        engine=args.engine,
        seed=args.seed,
        model=args.model,
        host=args.host,
        base_port=args.base_port,
        eos_mean=args.eos_mean,
        max_model_len=args.max_model_len,
        noise=args.noise,
        api_key=args.api_key,
        scheduling=args.scheduling_policy,
    ) as fleet:
        _print_table(args, profile, fleet.urls)
        await stop.wait()
    print("simulated engines stopped", file=sys.stderr)
    return 0


def _print_table(args: argparse.Namespace, profile: StepProfile, urls: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = profile.step
    t = Table(
        title=f"{len(urls)} simulated {args.engine} engines — model {args.model!r}, profile {profile.name}"
    )
    t.add_column("engine", justify="right")
    t.add_column("url")
    for i, u in enumerate(urls):
        t.add_row(str(i), u)
    con = Console(stderr=True)
    con.print(t)
    con.print(
        f"step = {s.c0_s * 1e3:.2f} ms + {s.c_batch_s * 1e3:.3f} ms/seq + {s.c_kv_s * 1e9:.1f} ns/KV token "
        f"+ {s.c_prefill_s * 1e6:.1f} µs/prefill token; max_num_seqs {profile.max_num_seqs}, "
        f"KV {profile.kv_capacity_tokens} tokens, {profile.max_batched_tokens} tokens/step, "
        f"{args.scheduling_policy} scheduling. Ctrl-C stops."
    )


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def run(args: argparse.Namespace) -> int:
    checked = _check(args)
    if isinstance(checked, str):
        print(f"slorouter sim: {checked}", file=sys.stderr)
        return 2
    try:
        return _run_loop(_serve(args, checked))
    except OSError as e:
        print(
            f"slorouter sim: cannot listen on {args.host}:{args.base_port}..: {e.strerror or e}. "
            "Is another `slorouter sim` running? Pick other ports with --base-port.",
            file=sys.stderr,
        )
        return 1
