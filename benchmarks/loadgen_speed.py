#!/usr/bin/env python3
"""How much does the load generator cost, and does it keep its schedule? Prints JSON.

A fast local SSE server runs in a child process (a raw asyncio protocol: an engine-like
"step" every ``--step-ms`` writes one vLLM-shaped chunk to every open stream); the
clients run in this process (``--pin``: server and clients on separate cores). The server logs
when it wrote each request's first and last token (``time.perf_counter``, i.e.
CLOCK_MONOTONIC, shared by both processes), so the client's timing error is measured,
not assumed.

Scenarios (each ``--duration`` s, constant arrival rate):
  target    --rate req/s x --tokens tokens at --step-ms pacing (default 500/s x 40 = 20k tok/s)
  requests  the same rate, 1 token each            (cost per request)
  tokens    rate/10, 10x the tokens each            (cost per token, same token rate)

Clients, side by side on the same scenarios:
  loadgen   slorouter-loadgen's runner (the thing measured)
  bare      the floor: aiohttp post + readany + a timestamp per read, nothing else
  openai    the official client (AsyncOpenAI, streaming), target scenario only (--no-openai skips)

Each scenario runs ``--repeats`` times with the clients interleaved (openai once); per
client and scenario the run with the median CPU is shown: achieved request and token
rates, CPU utilization of this process, schedule lag p50/p99/max (send time − scheduled
time), timing error (client-observed − server-written, first and last token) p50/p99.
For loadgen and bare, CPU µs per request and per token solved from the requests/tokens
scenarios of each repeat (median shown), and the ratio loadgen/bare.

    .venv/bin/python scripts/bench_loadgen.py [--duration 10] [--rate 500] [--tokens 40] [--step-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadgen import stats
from loadgen.runner import run_workload
from loadgen.workload import parse_workload

# ---------------------------------------------------------------- the server (child process)

CHUNK = orjson.dumps(
    {
        "id": "chatcmpl-bench0000000000000000",
        "object": "chat.completion.chunk",
        "created": 1750000000,
        "model": "bench",
        "choices": [{"index": 0, "delta": {"content": " tok"}, "logprobs": None, "finish_reason": None}],
    }
)
ROLE = CHUNK.replace(b'{"content":" tok"}', b'{"role":"assistant","content":""}')


def _frame(payload: bytes) -> bytes:
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


TOKEN_FRAME = _frame(CHUNK)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class Stream:
    __slots__ = ("first", "last", "left", "n", "rid", "tr")

    def __init__(self, tr: asyncio.Transport, rid: bytes, n: int) -> None:
        self.tr, self.rid, self.n, self.left = tr, rid, n, n
        self.first = self.last = 0.0


class Server:
    def __init__(self, step: float) -> None:
        self.step = step
        self.active: list[Stream] = []
        self.log: dict[str, tuple[float, float, int]] = {}
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()

    def tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = time.perf_counter()
        keep = []
        for s in self.active:
            if s.tr.is_closing():
                continue
            if s.left == s.n:
                s.first = now
                s.tr.write(_frame(ROLE) + TOKEN_FRAME)
            else:
                s.tr.write(TOKEN_FRAME)
            s.left -= 1
            if s.left == 0:
                s.last = now
                usage = {"prompt_tokens": 16, "completion_tokens": s.n, "total_tokens": 16 + s.n}
                tail = _frame(orjson.dumps({"id": "x", "choices": [], "usage": usage})) + _frame(b"[DONE]")
                s.tr.write(tail + b"0\r\n\r\n")
                self.log[s.rid.decode()] = (s.first, s.last, s.n)
            else:
                keep.append(s)
        self.active = keep
        nxt = due + self.step
        loop.call_at(max(nxt, loop.time()), self.tick, loop, nxt)

    def stats(self) -> bytes:
        out = orjson.dumps(
            {
                "log": self.log,
                "cpu_s": time.process_time() - self.cpu0,
                "wall_s": time.perf_counter() - self.wall0,
            }
        )
        self.log = {}
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return out


class Conn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = b""
        self.tr: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            lines = self.buf[:end].split(b"\r\n")
            hdr = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
            size = int(hdr.get(b"content-length", b"0"))
            if len(self.buf) < end + 4 + size:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + size], self.buf[end + 4 + size :]
            assert self.tr is not None
            if lines[0].startswith(b"GET /stats"):
                out = self.server.stats()
                self.tr.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
                continue
            n = int(orjson.loads(body).get("max_tokens") or 1)
            self.tr.write(HEAD)
            self.server.active.append(Stream(self.tr, hdr.get(b"x-request-id", b"?"), n))


async def serve(step_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = Server(step_ms / 1000.0)
    srv = await loop.create_server(lambda: Conn(server), "127.0.0.1", 0, backlog=4096)
    print(srv.sockets[0].getsockname()[1], flush=True)
    loop.call_at(loop.time() + server.step, server.tick, loop, loop.time() + server.step)
    await asyncio.Event().wait()


# ---------------------------------------------------------------- clients


async def server_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/stats") as r:
        data: dict[str, Any] = orjson.loads(await r.read())
        return data


def _body(tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "hello " * 9}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
    )


async def run_loadgen(url: str, rate: float, tokens: int, duration: float) -> dict[str, Any]:
    w = parse_workload(
        {
            "tiers": [{"name": "t", "class": "latency", "ttft_ms": 1000, "tpot_ms": 100}],
            "mix": [{"tier": "t", "share": 1, "prompt_tokens": 16, "output_tokens": tokens}],
            "arrival": {"process": "constant", "rate": rate},
            "duration_s": duration,
            "model": "bench",
            "drain_s": 30,
        },
        "bench",
        Path.cwd(),
    )
    res = await run_workload(w, url)
    recs = {r.rid: r for r in res.records}
    return {
        "cpu_s": res.cpu_s,
        "wall_s": res.duration,
        "lags": res.lags,
        "sent": {rid: res.t0 + r.sent for rid, r in recs.items() if r.sent is not None},
        "first": {rid: res.t0 + r.token_chunks[0] for rid, r in recs.items() if r.ok and r.token_chunks},
        "last": {rid: res.t0 + r.token_chunks[-1] for rid, r in recs.items() if r.ok and r.token_chunks},
        "ok": sum(r.ok for r in recs.values()),
        "tokens": sum(r.output_tokens for r in recs.values() if r.ok),
    }


async def run_bare(url: str, rate: float, tokens: int, duration: float) -> dict[str, Any]:
    body = _body(tokens)
    out: dict[str, Any] = {"sent": {}, "first": {}, "last": {}, "lags": [], "ok": 0, "tokens": 0}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(i: int, due: float) -> None:
            t = time.perf_counter()
            out["sent"][i], reads = t, []
            out["lags"].append(t - due)
            hdr = {"Content-Type": "application/json", "x-request-id": f"bare-{i}"}
            async with session.post(url + "/v1/chat/completions", data=body, headers=hdr) as r:
                read = r.content.readany
                while await read():
                    reads.append(time.perf_counter())
            out["first"][i], out["last"][i] = reads[0], reads[-1]  # role+token come in one read
            out["ok"] += 1
            out["tokens"] += tokens

        return await _open_loop(out, rate, duration, one)


async def run_openai(url: str, rate: float, tokens: int, duration: float) -> dict[str, Any]:
    import openai

    out: dict[str, Any] = {"sent": {}, "first": {}, "last": {}, "lags": [], "ok": 0, "tokens": 0}
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)

    async def one(i: int, due: float) -> None:
        t = time.perf_counter()
        out["sent"][i] = t
        out["lags"].append(t - due)
        stream = await client.chat.completions.create(
            model="bench",
            messages=[{"role": "user", "content": "hello " * 9}],
            max_tokens=tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": f"openai-{i}"},
        )
        times = [time.perf_counter() async for c in stream if c.choices]
        out["first"][i], out["last"][i] = times[0], times[-1]
        out["ok"] += 1
        out["tokens"] += tokens

    try:
        return await _open_loop(out, rate, duration, one)
    finally:
        await client.close()


async def _open_loop(out: dict[str, Any], rate: float, duration: float, one: Any) -> dict[str, Any]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    tasks = []
    i = 0
    while i / rate < duration:
        due = t0 + i / rate
        delay = due - time.perf_counter()
        await asyncio.sleep(max(delay, 0))
        tasks.append(asyncio.ensure_future(one(i, due)))
        i += 1
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    out["errors"] = len(errors)
    out["cpu_s"] = time.process_time() - cpu0
    out["wall_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- measurement


def _pcts(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "p50": round(stats.percentile(s, 50) * 1000, 3),
        "p99": round(stats.percentile(s, 99) * 1000, 3),
        "max": round((s[-1] if s else 0) * 1000, 3),
    }


async def measure(kind: str, url: str, rate: float, tokens: int, duration: float) -> dict[str, Any]:
    fn = {"loadgen": run_loadgen, "bare": run_bare, "openai": run_openai}[kind]
    async with aiohttp.ClientSession() as s:
        await server_stats(s, url)  # reset the server's log
    got = await fn(url, rate, tokens, duration)
    async with aiohttp.ClientSession() as s:
        srv = await server_stats(s, url)
    log = {int(k.rsplit("-", 1)[1]): v for k, v in srv["log"].items()}
    first_err = [got["first"][i] - log[i][0] for i in got["first"] if i in log]
    last_err = [got["last"][i] - log[i][1] for i in got["last"] if i in log]
    wall = got["wall_s"]
    return {
        "requests_ok": got["ok"],
        "errors": got.get("errors", len(got["sent"]) - got["ok"]),
        "req_per_s": round(got["ok"] / wall, 1),
        "tok_per_s": round(got["tokens"] / wall, 1),
        "client_cpu_util": round(got["cpu_s"] / wall, 3),
        "client_cpu_s": round(got["cpu_s"], 3),
        "server_cpu_util": round(srv["cpu_s"] / srv["wall_s"], 3),
        "schedule_lag_ms": _pcts(got["lags"]),
        "first_token_error_ms": _pcts(first_err),
        "last_token_error_ms": _pcts(last_err),
        "_requests": got["ok"],
        "_tokens": got["tokens"],
    }


def solve(req: dict[str, Any], tok: dict[str, Any]) -> dict[str, float]:
    """CPU = a·requests + b·tokens, from the two scenarios."""
    r1, t1, c1 = req["_requests"], req["_tokens"], req["client_cpu_s"]
    r2, t2, c2 = tok["_requests"], tok["_tokens"], tok["client_cpu_s"]
    det = r1 * t2 - r2 * t1
    a = (c1 * t2 - c2 * t1) / det
    b = (r1 * c2 - r2 * c1) / det
    return {"cpu_us_per_request": round(a * 1e6, 2), "cpu_us_per_token": round(b * 1e6, 3)}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median client CPU (its own numbers, not a mix of runs)."""
    return sorted(runs, key=lambda r: r["client_cpu_s"])[len(runs) // 2]


async def bench(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """Every scenario ``--repeats`` times, the clients interleaved (loadgen, bare, loadgen, ...),
    so that both see the same machine; per client and scenario the median-CPU run is kept."""
    out: dict[str, Any] = {"config": vars(args) | {"url": url}, "clients": {}}
    scen = {
        "target": (args.rate, args.tokens),
        "requests": (args.rate, 1),
        "tokens": (args.rate / 10, args.tokens * 10),
    }
    kinds = ["loadgen", "bare"] + ([] if args.no_openai else ["openai"])
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {n: [] for n in scen} for k in kinds}
    for rep in range(args.repeats):
        for name, (rate, tokens) in scen.items():
            for kind in kinds:
                if kind == "openai" and (name != "target" or rep > 0):
                    continue
                print(
                    f"[bench] {rep + 1}/{args.repeats} {kind} {name}: {rate:g} req/s x {tokens} tokens",
                    file=sys.stderr,
                )
                runs[kind][name].append(await measure(kind, url, rate, tokens, args.duration))
                await asyncio.sleep(1.0)
    for kind in kinds:
        res: dict[str, Any] = {name: _median_run(rs) for name, rs in runs[kind].items() if rs}
        if "requests" in res:
            per = [solve(a, b) for a, b in zip(runs[kind]["requests"], runs[kind]["tokens"], strict=True)]
            res["per_unit"] = {
                k: sorted(p[k] for p in per)[len(per) // 2]
                for k in ("cpu_us_per_request", "cpu_us_per_token")
            }
            res["per_unit_each_repeat"] = per
        for r in (x for rs in runs[kind].values() for x in rs):
            r.pop("_requests", None)
            r.pop("_tokens", None)
        out["clients"][kind] = res
    lg, bare = out["clients"]["loadgen"], out["clients"]["bare"]
    out["ratio_loadgen_to_bare"] = {
        k: round(lg["per_unit"][k] / bare["per_unit"][k], 2) if bare["per_unit"][k] > 0 else None
        for k in lg["per_unit"]
    }
    out["ratio_cpu_util_target"] = {
        k: round(v["target"]["client_cpu_util"] / bare["target"]["client_cpu_util"], 2)
        for k, v in out["clients"].items()
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--step-ms", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3, help="runs per scenario and client (median kept)")
    ap.add_argument("--no-openai", action="store_true")
    ap.add_argument("--pin", action="store_true", help="pin client and server to separate cores")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import uvloop

    if args.serve:
        uvloop.run(serve(args.step_ms))
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    cmd = [sys.executable, "-m", "benchmarks.loadgen_speed", "--serve", "--step-ms", str(args.step_ms)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        if pin:
            os.sched_setaffinity(child.pid, {cpus[1]})
            os.sched_setaffinity(0, {cpus[0]})
        load0 = os.getloadavg()
        out = uvloop.run(bench(args, f"http://127.0.0.1:{port}"))
        out["pinned"] = pin
        load1 = os.getloadavg()
        out["machine"] = {"cpus": len(cpus), "loadavg_1m_before": load0[0], "loadavg_1m_after": load1[0]}
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    finally:
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
