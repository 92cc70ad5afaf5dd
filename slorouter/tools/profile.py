"""``slorouter profile``: sweep a running backend and write its latency profile.

    slorouter profile --target http://127.0.0.1:8000 --out profile.json \\
        [--model NAME] [--engine vllm|tgi|openai] [--concurrency 1,2,4,8,16] \\
        [--requests-per-level N] [--repeat N] [--prompt-tokens 100] [--output-tokens 128] \\
        [--raw levels.json]

For each concurrency level it keeps that many streaming requests in flight (closed loop,
``ignore_eos`` so every request generates exactly ``--output-tokens``), records every chunk's
arrival time and token count, and reports mean TTFT and the inter-token latency (mean =
decode time / decode tokens, p50/p90 over engine steps). Then it fits the step model
``c0 + c_batch·batch + c_kv·kv_tokens + c_prefill·prefill_tokens`` to all step observations
(:mod:`slorouter.tools.profile_fit`) and writes a :class:`~slorouter.models.profile.StepProfile`
(``source: "measured"``) that the router loads as its prior and ``slorouter sim --profile``
serves. The table shows, per level, what the fit predicts next to what was measured.

On a shared host a few seconds of somebody else's work make one level's steps slower than
the engine is (seen on a 2-core CI host: one level of vLLM 25 % slow, the others on the
curve). ``--repeat N`` sweeps the levels N times in turn (1, 4, 8, 1, 4, 8, …, so one
disturbance meets one pass of a level; each pass with its own prompts, so no pass finds the
last one's in the prefix cache) and keeps, per level, the pass with the lowest mean
inter-token latency — contention only ever adds time, so the fastest pass is the closest to
the engine's own (the rule ``timeit`` uses). The fit and the table use the kept passes;
``--raw`` lists every pass's mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slorouter.models.profile import ProfilePoint, StepProfile
from slorouter.tools.profile_client import (
    ENGINES,
    EngineClient,
    ProfileClientError,
    calibrate_prompt,
    run_level,
    scrape_vllm_itl,
    scrape_vllm_kv_capacity,
)
from slorouter.tools.profile_fit import Fit, LevelStats, fit_step, level_stats


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,2,4,8, got {text!r}"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be integers >= 1, got {text!r}")
    return sorted(set(levels))


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="base URL of the backend, e.g. http://127.0.0.1:8000")
    p.add_argument("--out", required=True, type=Path, help="profile JSON to write")
    p.add_argument("--model", default="", help="model name to request (default: the first of /v1/models)")
    p.add_argument("--engine", choices=ENGINES, default="vllm", help="backend API flavour (default vllm)")
    p.add_argument(
        "--concurrency", type=_levels, default=[1, 2, 4, 8, 16], help="levels (default 1,2,4,8,16)"
    )
    p.add_argument(
        "--requests-per-level",
        type=_positive,
        default=None,
        help="requests per level (default max(8, 2 x concurrency); never below the level)",
    )
    p.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        help="sweep the levels N times and keep each level's fastest pass (default 1; 2-3 on a shared host)",
    )
    p.add_argument(
        "--prompt-tokens", type=_positive, default=100, help="prompt length in tokens (default 100)"
    )
    p.add_argument(
        "--output-tokens", type=_positive, default=128, help="tokens generated per request (default 128)"
    )
    p.add_argument("--name", default="", help="profile name (default: derived from model and engine)")
    p.add_argument("--max-num-seqs", type=_positive, default=256, help="engine's max running sequences (256)")
    p.add_argument(
        "--max-batched-tokens", type=_positive, default=2048, help="engine's token budget per step"
    )
    p.add_argument(
        "--kv-capacity",
        type=_positive,
        default=None,
        help="KV capacity in tokens (default: read from vLLM's /metrics, else 262144)",
    )
    p.add_argument("--raw", type=Path, default=None, help="also write per-level details (JSON)")
    p.add_argument("--seed", type=int, default=0, help="prompt text seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


async def sweep(
    args: argparse.Namespace, console: Console
) -> tuple[StepProfile, list[LevelStats], dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = EngineClient(session, args.target, args.engine, args.model)
        model = await client.model_name()
        client.model = model
        words, got = await calibrate_prompt(client, args.prompt_tokens, args.seed)
        await run_level(client, 1, 2, words, min(16, args.output_tokens), args.seed + 1)  # warm-up
        kv_cap = args.kv_capacity or await scrape_vllm_kv_capacity(session, args.target) or 262_144
        kept: dict[int, LevelStats] = {}
        passes: dict[int, list[float]] = {c: [] for c in args.concurrency}
        engine_itl: dict[int, float] = {}
        counts = {c: max(c, args.requests_per_level or max(8, 2 * c)) for c in args.concurrency}
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, disable=args.quiet, transient=False,
        ) as progress:  # fmt: skip
            task = progress.add_task("profiling", total=args.repeat * sum(counts.values()))
            for rep in range(args.repeat):
                for c in args.concurrency:
                    label = f"concurrency {c}" + (f" (pass {rep + 1})" if args.repeat > 1 else "")
                    progress.update(task, description=label)
                    before = await scrape_vllm_itl(session, args.target)
                    traces, wall = await run_level(
                        client, c, counts[c], words, args.output_tokens, args.seed + 1000 * rep,
                        on_done=lambda _t: progress.advance(task),
                    )  # fmt: skip
                    after = await scrape_vllm_itl(session, args.target)
                    errors = [t.error for t in traces if t.error]
                    if len(errors) == len(traces):
                        raise ProfileClientError(f"every request at concurrency {c} failed, e.g. {errors[0]}")
                    s = level_stats(c, traces, wall)
                    passes[c].append(s.mean_itl_s)
                    if c not in kept or _faster(s, kept[c]):
                        kept[c] = s
                        engine_itl.pop(c, None)
                        if before and after and after[1] > before[1]:
                            engine_itl[c] = (after[0] - before[0]) / (after[1] - before[1])
    stats = [kept[c] for c in args.concurrency]
    fit = fit_step([s.observations for s in stats])
    points = tuple(
        ProfilePoint(
            concurrency=s.concurrency, mean_itl_s=s.mean_itl_s, p50_itl_s=s.p50_itl_s, p90_itl_s=s.p90_itl_s,
            mean_ttft_s=s.mean_ttft_s,
            kv_tokens=round(s.mean_kv_tokens) if math.isfinite(s.mean_kv_tokens) else None,
        )
        for s in stats
    )  # fmt: skip
    profile = StepProfile(
        name=args.name or f"{model}-{args.engine}",
        step=fit.step,
        engine=args.engine,
        model=model,
        source="measured",
        max_num_seqs=args.max_num_seqs,
        kv_capacity_tokens=kv_cap,
        max_batched_tokens=max(args.max_batched_tokens, args.max_num_seqs),
        points=points,
    )
    raw = {
        "target": args.target,
        "prompt_tokens": got,
        "output_tokens": args.output_tokens,
        "fit": {"terms": list(fit.terms), "rmse_s": fit.rmse_s, "observations": fit.n},
        "repeat": args.repeat,
        "levels": [
            {**_level_json(s, fit, engine_itl.get(s.concurrency)), "pass_mean_itl_s": passes[s.concurrency]}
            for s in stats
        ],
    }
    return profile, stats, raw


def _faster(a: LevelStats, b: LevelStats) -> bool:
    """Whether pass ``a`` of a level ran faster than pass ``b`` (a pass without a measured
    step never replaces one with)."""
    return math.isfinite(a.mean_itl_s) and not (math.isfinite(b.mean_itl_s) and a.mean_itl_s >= b.mean_itl_s)


def _predicted_itl(s: LevelStats, fit: Fit) -> float:
    steps = sum(o.steps for o in s.observations)
    return sum(fit.predict(o) * o.steps for o in s.observations) / steps if steps else math.nan


def _level_json(s: LevelStats, fit: Fit, engine_itl: float | None) -> dict[str, Any]:
    d = {k: getattr(s, k) for k in LevelStats.__slots__ if k != "observations"}
    d["fit_itl_s"] = _predicted_itl(s, fit)
    d["engine_reported_itl_s"] = engine_itl
    return d


def render(console: Console, profile: StepProfile, raw: dict[str, Any]) -> None:
    t = Table(
        title=f"{profile.name}: {raw['prompt_tokens']}-token prompts, {raw['output_tokens']} output tokens",
        caption="times in ms; ITL = decode time / decode tokens; fit = the fitted step model's mean over "
        "the same steps; engine = vLLM's own inter_token_latency histogram",
    )
    for col in ("conc", "reqs", "TTFT", "ITL", "p50", "p90", "fit", "engine", "tok/s", "batch", "KV"):
        t.add_column(col, justify="right")

    def ms(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v * 1000:.1f}"

    for lv in raw["levels"]:
        t.add_row(
            str(lv["concurrency"]), f"{lv['requests']}" + (f" ({lv['errors']} err)" if lv["errors"] else ""),
            ms(lv["mean_ttft_s"]), ms(lv["mean_itl_s"]), ms(lv["p50_itl_s"]), ms(lv["p90_itl_s"]),
            ms(lv["fit_itl_s"]), ms(lv["engine_reported_itl_s"]), f"{lv['tokens_per_s']:.0f}",
            f"{lv['mean_batch']:.1f}", f"{lv['mean_kv_tokens']:.0f}",
        )  # fmt: skip
    console.print(t)
    c, f = profile.step, raw["fit"]
    console.print(
        f"step ≈ {c.c0_s * 1e3:.2f} ms + {c.c_batch_s * 1e3:.3f} ms·batch + {c.c_kv_s * 1e6:.4f} µs·kv_tokens"
        f" + {c.c_prefill_s * 1e6:.2f} µs·prefill_tokens  (terms kept: {', '.join(f['terms']) or 'c0'};"
        f" rmse {f['rmse_s'] * 1e3:.2f} ms over {f['observations']} steps)"
    )


def _fail(console: Console, message: str) -> int:
    console.print(f"slorouter profile: {message}", style="red", soft_wrap=True, markup=False)
    return 2


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        profile, _stats, raw = asyncio.run(sweep(args, console))
    except aiohttp.ClientConnectionError as e:
        return _fail(console, f"cannot reach {args.target} ({e}); is the server running?")
    except (ProfileClientError, ValueError) as e:
        return _fail(console, str(e))
    render(console, profile, raw)
    try:
        profile.save(args.out)
        if args.raw:
            args.raw.write_text(json.dumps(raw, indent=2) + "\n")
    except OSError as e:
        return _fail(console, f"cannot write {e.filename}: {e.strerror}")
    console.print(f"wrote {args.out}" + (f" and {args.raw}" if args.raw else ""), soft_wrap=True)
    return 0
