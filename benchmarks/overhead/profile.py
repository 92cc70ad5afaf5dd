#!/usr/bin/env python3
"""Where a proxy's CPU goes: folded py-spy stacks (``bench_overhead.py --py-spy DIR``,
``--format raw``) summed into the parts of the per-token / per-request path.

``python -m benchmarks.overhead.profile FILE [FILE ...] [--per-unit US]``: each sample is given to the part
of its innermost frame that matches a rule below (C frames of the system calls first,
with ``--py-spy-native``); ``--per-unit`` turns shares into µs per token (or request)
using a CPU figure measured without the profiler (py-spy slows the process it samples).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

# (part, substrings of a frame) — checked innermost frame first; the first frame that
# matches any rule decides the sample's part
LEAF_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("socket reads (syscall)", ("read (libc", "recv (libc", "recvfrom (libc", "readv (libc")),
    (
        "socket writes (syscall)",
        ("write (libc", "writev (libc", "send (libc", "sendmsg (libc", "sendto (libc"),
    ),
    ("epoll (syscall)", ("epoll_wait (libc", "epoll_pwait (libc")),
    ("getpid (asyncio.get_running_loop, 3.11)", ("getpid (libc",)),
)
FRAME_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SSE observer", ("slorouter/proxy/sse.py",)),
    ("tracker: on_tokens", ("Tracker.on_tokens", "Tracker._add_output", "mark_slack", "on_time_in_chunk")),
    ("latency/length models (samples)", ("slorouter/models/",)),
    ("metrics", ("slorouter/metrics/", "prometheus_client/", "fastdigest")),
    ("tracker: request lifecycle", ("slorouter/state/",)),
    ("policy + admission", ("slorouter/policy/", "slorouter/admission/", "slorouter/proxy/dispatcher.py")),
    (
        "request parsing + classification",
        (
            "slorouter/http/requests.py",
            "slorouter/http/openai.py",
            "slorouter/config/",
            "slorouter/proxy/engines.py",
            "orjson",
        ),
    ),
    (
        "timers",
        ("TimerHandle", "call_later", "call_at", "_reschedule_timeout", "asyncio/timeouts.py", "timeout ("),
    ),
    ("forwarder (slorouter)", ("slorouter/proxy/forward.py", "slorouter/proxy/upstream.py")),
    ("aiohttp response machinery", ("aiohttp/web_response.py", "aiohttp/http_writer.py", "_http_writer")),
    (
        "aiohttp client",
        (
            "aiohttp/client",
            "aiohttp/streams.py",
            "aiohttp/connector.py",
            "aiohttp/payload",
            "aiohttp/helpers.py",
            "aiohttp/tracing.py",
            "yarl",
            "multidict",
        ),
    ),
    (
        "aiohttp server (request, middleware)",
        ("aiohttp/web_", "aiohttp/http_parser", "_http_parser", "slorouter/http/"),
    ),
    (
        "event loop (uvloop, asyncio tasks/futures)",
        ("asyncio/", "loop.c", "uvloop", "libuv", "core.c", "stream.c", "linux.c"),
    ),
)


def part_of(frames: list[str]) -> str:
    leaf = frames[-1]
    for part, keys in LEAF_RULES:
        if any(k in leaf for k in keys):
            return part
    for f in reversed(frames):
        for part, keys in FRAME_RULES:
            if any(k in f for k in keys):
                return part
    return "other"


def breakdown(paths: list[Path]) -> tuple[int, collections.Counter[str]]:
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    for p in paths:
        for line in p.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack:
                continue
            k = int(n)
            total += k
            parts[part_of(stack.split(";"))] += k
    return total, parts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--per-unit", type=float, help="CPU µs per token/request measured without the profiler")
    a = ap.parse_args(argv)
    total, parts = breakdown(a.files)
    print(f"{total} samples")
    for part, k in parts.most_common():
        share = k / total
        extra = f"  {share * a.per_unit:6.1f} µs" if a.per_unit else ""
        print(f"{100 * share:5.1f} %{extra}  {part}")


if __name__ == "__main__":
    main()
