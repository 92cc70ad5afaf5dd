"""The router in front of real vLLM servers: router overhead, the router's latency model
against vLLM's own inter-token latency, and polyserve against round-robin. Prints JSON.

    scripts/real_vllm.sh --ports 8101,8102 --eager &        # two real servers (or --start)
    scripts/bench_real_policies.py --urls http://127.0.0.1:8101,http://127.0.0.1:8102 \\
        [--sections overhead,model,policies] [--repeat 3] [--json OUT]

Sections:

* ``overhead``: the same closed-loop streams (64-token prompts, 64 output tokens) against
  server 1 directly and through a router whose only backend it is, alternated ``--repeat``
  times; client-side TTFT and inter-chunk-gap medians at concurrency 1 and 8.
* ``model-defaults``: load levels 1, 4, 8 per server through a router without a profile
  (``least-request``, 2 x level streams; its model starts from the engine defaults, a
  GPU-sized guess, and learns online only); per server and level: vLLM's own mean ITL
  over the level (``vllm:inter_token_latency_seconds`` sum/count deltas), the router's
  observed gaps, and its model's mean and p90 prediction at that load.
* ``model``: the same, the router seeded with a ``slorouter profile`` of server 1 (both
  servers are profiled at once, levels 1,4,8, so that each is measured while the other
  is busy too, as behind the router).
* ``policies``: tiers ``tight`` (TPOT 1.5 x the single-stream step, TTFT 3 x the
  single-stream TTFT) on server 1 and ``loose`` (TPOT 4 x, TTFT 10 x) on server 2; the
  single-stream step is vLLM's own ITL at level 1 in ``model-defaults`` and the TTFT the
  router's (the faster server of the two); the same closed-loop
  users (``--users``, by default chosen from vLLM's measured ITL curve: as many tight
  users as one server holds well within the tight TPOT, as many loose ones as one
  server holds within 0.6 x the loose TPOT; 96 output tokens) for ``--seconds`` through ``round-robin``
  and ``polyserve`` (``--policies``; both routers start from the model state ``model-defaults`` left);
  DSLO attainment per tier is the router's own verdict (``slorouter.judge.verdict``: every
  token by its per-token deadline).

The tests in ``tests/e2e/test_router_real_model.py`` and ``test_overload_real.py`` call the
same functions (``from benchmarks import real``). Requests go through the load generator's
client (``loadgen.client.send_call``) and the DSLO verdict is the router's own
(``slorouter.judge.verdict``, the one SLO judge).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.real.compare import compare_policies, itl_curve, single_stream, totals
from benchmarks.real.levels import model_levels, overhead, profile_servers, profile_summary, unsteady


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.rstrip("/") for u in args.urls.split(",") if u]
    sections = set(args.sections.split(","))
    result: dict[str, Any] = {"urls": urls}
    if "overhead" in sections:
        result["overhead"] = await overhead(urls[0], (1, 8), args.repeat)
    state: bytes | None = None
    if sections & {"model-defaults", "policies"}:  # the router learns alone, from the engine defaults
        with tempfile.TemporaryDirectory() as d:
            state_file = Path(d) / "state.json"
            result["model_defaults"] = await model_levels(urls, None, state_file)
            result["model_defaults_host_noise"] = unsteady(result["model_defaults"])
            state = state_file.read_bytes()
        step_s, ttft_s = single_stream(result["model_defaults"])
        result["single_stream_step_ms"], result["single_stream_ttft_ms"] = 1e3 * step_s, 1e3 * ttft_s
    if "model" in sections:  # the router seeded with a profile of server 1
        with tempfile.TemporaryDirectory() as d:
            profiles = await profile_servers(urls, Path(d))
            result["profiles"] = {f"e{i}": profile_summary(p) for i, p in enumerate(profiles)}
            result["model"] = await model_levels(urls, profiles[0], None)
    if "policies" in sections:
        step = (args.step_ms or result["single_stream_step_ms"]) / 1e3
        first = (args.ttft_ms or result["single_stream_ttft_ms"]) / 1e3
        users: dict[str, int] | None = None
        if args.users != "auto":
            tight, loose = (int(x) for x in args.users.split(","))
            users = {"tight": tight, "loose": loose}
        curve = itl_curve(result["model_defaults"])
        pols = [p for p in args.policies.split(",") if p]
        result["policies"] = [
            await compare_policies(
                urls, step, first, None, state, users, seconds=args.seconds, policies=pols, curve=curve
            )
            for _ in range(args.repeat)
        ]
    return result


def _f(x: Any, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def tables(result: dict[str, Any], console: Console) -> None:
    """The JSON's figures as terminal tables."""
    for c, row in result.get("overhead", {}).items():
        t = Table(title=f"router overhead, concurrency {c} (client-side medians, ms)")
        for col in ("path", "requests", "TTFT p50", "ITL p50"):
            t.add_column(col, justify="right")
        for name in ("direct", "router"):
            x = row[name]
            t.add_row(name, str(x["requests"]), _f(x["ttft_p50_ms"]), _f(x["itl_p50_ms"]))
        t.add_row("delta", "", _f(row["ttft_delta_ms"], "+.1f"), _f(row["itl_delta_ms"], "+.1f"))
        console.print(t)
    for key, title in (("model_defaults", "engine defaults"), ("model", "seeded with a profile")):
        if key not in result:
            continue
        t = Table(title=f"the router's model vs vLLM's own ITL ({title}; ms)")
        cols = ("level", "server", "vLLM ITL", "router gaps", "batch", "model mean", "model p90", "error %")
        for col in cols:
            t.add_column(col, justify="right")
        for r in result[key]["rows"]:
            t.add_row(
                str(r["level"]),
                r["backend"],
                _f(r["vllm_itl_ms"]),
                _f(r["router_gap_ms"]),
                _f(r["batch"]),
                _f(r["model_mean_ms"]),
                _f(r["model_p90_ms"]),
                _f(r["error_pct"], "+.0f"),
            )
        console.print(t)
    for i, run in enumerate(result.get("policies", [])):
        tiers = ", ".join(f"{x['name']} TPOT {x['tpot_ms']} ms TTFT {x['ttft_ms']} ms" for x in run["tiers"])
        t = Table(title=f"run {i + 1}: {tiers}; users {run['users']}")
        for col in ("policy", "tier", "requests", "met", "DSLO att.", "TTFT", "TPOT", "tok/s", "servers"):
            t.add_column(col, justify="right")
        pols = [p for p in run if isinstance(run[p], dict) and "window_s" in run[p]]
        for pol in pols:
            for tier in run["users"]:
                x = run[pol][tier]
                t.add_row(
                    pol,
                    tier,
                    str(x["requests"]),
                    str(x["met"]),
                    _f(x["attainment"], ".2f"),
                    _f(x["ttft_mean_ms"], ".0f"),
                    _f(x["tpot_mean_ms"]),
                    _f(x["tokens_per_s"], ".0f"),
                    " ".join(f"{b}:{n}" for b, n in x["by_backend"].items()),
                )
            tot = totals(run[pol], list(run["users"]))
            t.add_row(
                pol,
                "all",
                str(tot["sent"]),
                str(tot["good"]),
                f"{tot['good_per_s']:.2f}/s",
                f"{tot['window_good_per_s']:.2f}/s in window",
                "",
                "",
                "",
            )
        console.print(t)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urls", required=True, help="comma-separated vLLM base URLs (two for model/policies)")
    ap.add_argument("--sections", default="overhead,model-defaults,model,policies")
    ap.add_argument("--repeat", type=int, default=3, help="alternations (overhead) / policy runs")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of load per policy run")
    ap.add_argument(
        "--users",
        default="auto",
        help="closed-loop users: tight,loose (default auto: from the servers' measured ITL curve)",
    )
    ap.add_argument(
        "--policies",
        default="round-robin,polyserve",
        help="policies to compare (kinds, or polyserve:no-lend: polyserve without lending room)",
    )
    ap.add_argument("--step-ms", type=float, help="single-stream step for the tiers (default: measured)")
    ap.add_argument("--ttft-ms", type=float, help="single-stream TTFT for the tiers (default: measured)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if len([u for u in args.urls.split(",") if u]) < 2 and set(args.sections.split(",")) - {"overhead"}:
        ap.error("--urls needs two servers for the model and policies sections")
    result = asyncio.run(_main(args))
    text = json.dumps(result, indent=2, default=lambda o: asdict(o))
    print(text)
    tables(result, Console(stderr=True))
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
