"""The results file: vLLM-compatible keys at the top level, then ``overall``, ``tiers``,
``loadgen`` (how the run went: schedule lag, CPU, warnings, the workload) and
``records`` (every call as seen on the wire), from which ``report`` recomputes
everything."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from loadgen import stats
from loadgen.errors import LoadgenError
from loadgen.metrics import summarize
from loadgen.records import CallRecord, Unit, group_units
from loadgen.runner import RunResult
from loadgen.tiers import TierSpec

VERSION = "0.1.0"
DEFAULT_MAX_LAG_MS = 10.0


def run_meta(res: RunResult) -> dict[str, Any]:
    w = res.workload
    return {
        "version": VERSION,
        "workload": w.name,
        "workload_file": w.file,
        "target": res.target,
        "endpoint": w.endpoint,
        "seed": w.seed,
        "arrival": w.arrival.to_json(),
        "closed_loop": w.arrival.closed_loop,
        "duration_s": w.duration_s,
        "requests": w.requests,
        "tier_by": w.tier_by,
        "tier_header": w.tier_header,
        "mix": [
            {
                "tier": e.tier.name,
                "share": e.share,
                "stream": e.stream,
                "prompt_tokens": e.prompt.to_json(),
                "output_tokens": e.output.to_json(),
                "workflow": e.workflow.to_json() if e.workflow else None,
            }
            for e in w.mix
        ],
        "tier_defs": [t.to_json() for t in w.tiers.values()],
        "cpu_s": res.cpu_s,
        "wall_start": res.wall_start,
        "date": dt.datetime.fromtimestamp(res.wall_start).strftime("%Y%m%d-%H%M%S"),
        "model": res.model,
        "max_concurrency": res.max_concurrency,
    }


def build(units: list[Unit], duration: float, meta: dict[str, Any], max_lag_ms: float) -> dict[str, Any]:
    """The whole results document from records and run metadata."""
    tiers = {d["name"]: TierSpec.from_json(d) for d in meta["tier_defs"]}
    mix_tiers = [m["tier"] for m in meta.get("mix", [])]
    vllm, tier_out, overall = summarize(units, tiers, duration, mix_tiers)
    lags = [] if meta.get("closed_loop") else _lags(units)
    lag_sorted = sorted(lags)
    cpu_util = meta["cpu_s"] / duration if duration > 0 else 0.0
    lag = {
        "p50": stats.percentile(lag_sorted, 50) * 1000.0,
        "p99": stats.percentile(lag_sorted, 99) * 1000.0,
        "max": (lag_sorted[-1] if lag_sorted else 0.0) * 1000.0,
        "late_sends": sum(1 for x in lags if x * 1000.0 > max_lag_ms),
    }
    warnings = []
    if lag["p99"] > max_lag_ms:
        why = (
            f"It used only {cpu_util:.0%} of a core, so the machine did not give it the CPU in time "
            "(other busy processes?)."
            if cpu_util < 0.5
            else f"It used {cpu_util:.0%} of a core."
        )
        warnings.append(
            f"the load generator fell behind its schedule: p99 send lag {lag['p99']:.1f} ms "
            f"(limit {max_lag_ms:g} ms; {lag['late_sends']} of {len(lags)} sends late). {why} "
            "The offered rate was not delivered as planned and TTFTs may include client delay: "
            "lower the rate, give the generator a quiet core, or split the load over several generators."
        )
    if cpu_util > 0.9:
        warnings.append(
            f"the load generator used {cpu_util:.0%} of a core: chunk times may include client "
            "delay (TTFT/ITL inflated). Lower the rate, or give the generator its own core."
        )
    arrival = meta["arrival"]
    rate = arrival.get("rate")
    loadgen = dict(meta) | {
        "schedule_lag_ms": lag,
        "cpu_utilization": cpu_util,
        "behind": bool(warnings),
        "warnings": warnings,
        "max_lag_ms": max_lag_ms,
    }
    chat = str(meta.get("endpoint", "")).rstrip("/").endswith("chat/completions")
    head = {
        "date": meta["date"],
        "endpoint_type": "openai-chat" if chat else "openai",
        "backend": "openai-chat" if chat else "openai",
        "label": "slorouter-loadgen",
        "model_id": meta["model"],
        "tokenizer_id": None,
        "num_prompts": len([c for u in units for c in u.calls if c.sent is not None]),
        "request_rate": rate if rate is not None else "inf",
        "burstiness": arrival.get("burstiness", 1.0),
        "max_concurrency": meta.get("max_concurrency"),
        "duration": duration,
    }
    return (
        head
        | vllm
        | {
            "overall": overall,
            "tiers": tier_out,
            "loadgen": loadgen,
            "records": [c.to_json() for u in units for c in u.calls],
        }
    )


def from_run(res: RunResult, max_lag_ms: float = DEFAULT_MAX_LAG_MS) -> dict[str, Any]:
    return build(res.units, res.duration, run_meta(res), max_lag_ms)


def _lags(units: list[Unit]) -> list[float]:
    out = []
    for u in units:
        c = u.calls[0]
        if c.sent is not None:
            out.append(max(0.0, c.sent - c.sched))
    return out


def save(doc: dict[str, Any], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def load(path: str | Path, max_lag_ms: float | None = None) -> dict[str, Any]:
    """Read a saved results file and recompute every metric from its records."""
    try:
        raw = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise LoadgenError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise LoadgenError(f"{path}: not JSON: {exc}") from None
    if not isinstance(raw, dict) or "records" not in raw or "loadgen" not in raw:
        raise LoadgenError(f"{path}: not a slorouter-loadgen results file (no 'records'/'loadgen' keys)")
    try:
        records = [CallRecord.from_json(r) for r in raw["records"]]
        meta = raw["loadgen"]
        units = group_units(records)
        lag = max_lag_ms if max_lag_ms is not None else float(meta.get("max_lag_ms", DEFAULT_MAX_LAG_MS))
        return build(units, float(raw["duration"]), meta, lag)
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadgenError(f"{path}: damaged results file ({type(exc).__name__}: {exc})") from None
