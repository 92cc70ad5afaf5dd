"""PNG plots (matplotlib, Agg backend) of one run and of a sweep.

matplotlib is the optional ``plots`` extra (``pip install 'slorouter[plots]'``):
:func:`require` says so before a run starts, not after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import slojudge
from loadgen import slo
from loadgen.errors import LoadgenError
from loadgen.records import CallRecord


def require() -> None:
    """Raise :class:`LoadgenError` (what to install) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LoadgenError(
            "--plot needs matplotlib, which is not installed: pip install 'slorouter[plots]' "
            "(or leave out --plot)"
        ) from None


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, values: list[float], label: str, color: str) -> bool:
    if not values:
        return False
    xs = sorted(values)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=label, color=color)
    return True


def plot_run(doc: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """attainment.png, ttft_cdf.png, tpot_cdf.png, timeline.png in ``out_dir``."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs = [CallRecord.from_json(r) for r in doc["records"]]
    tiers = doc["tiers"]
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tiers) + 2), 4))
    names = list(tiers)
    kinds = (
        ("attainment", "SLO (primary)"),
        ("attainment_dslo", "DSLO"),
        ("attainment_mean_tpot", "mean-TPOT"),
    )
    width = 0.8 / len(kinds)
    for k, (key, label) in enumerate(kinds):
        vals = [100.0 * (tiers[n][key] or 0.0) if tiers[n][key] is not None else 0.0 for n in names]
        ax.bar([i + (k - 1) * width for i in range(len(names))], vals, width, label=label)
    ax.axhline(90, color="gray", ls="--", lw=0.8)
    ax.axhline(99, color="gray", ls=":", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("attainment (% of arrivals)")
    ax.set_title(f"SLO attainment per tier — {doc['loadgen']['workload']}")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "attainment.png", plt))

    for fname, title, fn in (
        ("ttft_cdf.png", "TTFT", slo.ttft),
        ("tpot_cdf.png", "mean TPOT per request", slo.mean_tpot),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, name in enumerate(names):
            vals = [
                1000.0 * v for r in recs if r.tier == name and r.ok and r.stream if (v := fn(r)) is not None
            ]
            spec = tiers[name]["slo"]
            limit = spec["ttft_ms"] if fname.startswith("ttft") else spec["tpot_ms"]
            if _cdf(ax, vals, name, f"C{k % 10}") and limit:
                ax.axvline(limit, ls=":", lw=0.8, color=f"C{k % 10}")
        ax.set_xlabel(f"{title} (ms); dotted: tier limit")
        ax.set_ylabel("fraction of completed streamed requests")
        ax.set_title(f"{title} CDF per tier")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / fname, plt))

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for k, name in enumerate(names):
        pts = [
            (r.sent, 1000.0 * t) for r in recs if r.tier == name and r.ok if (t := slo.ttft(r)) is not None
        ]
        if pts:
            ax1.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, label=name, color=f"C{k % 10}")
    ax1.set_ylabel("TTFT (ms; not streamed: whole answer)")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8, markerscale=3)
    ax1.set_title("requests over time")
    bucket: dict[int, int] = {}
    for r in recs:
        times = r.token_chunks
        prev = 0
        for t, cum in zip(times, slojudge.cumulative_tokens(len(times), r.output_tokens), strict=True):
            bucket[int(t)] = bucket.get(int(t), 0) + cum - prev
            prev = cum
    if bucket:
        xs = list(range(max(bucket) + 1))
        ax2.plot(xs, [bucket.get(x, 0) for x in xs], drawstyle="steps-post")
    ax2.set_ylabel("output tokens/s")
    ax2.set_xlabel("time since start (s)")
    paths.append(_save(fig, out / "timeline.png", plt))
    return paths


def plot_sweep(points: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Attainment vs offered rate, one line per tier plus overall."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = sorted(points, key=lambda p: p["rate"])
    tiers = sorted({t for p in pts for t in p["tiers"]})
    rates = [p["rate"] for p in pts]
    slo_tiers = {t for p in pts for t in p.get("slo_tiers", p["tiers"])}
    for t in tiers:
        ys = [100.0 * (p["tiers"].get(t) or 0.0) for p in pts]
        best_effort = t not in slo_tiers
        ax.plot(
            rates,
            ys,
            marker="o",
            ls="--" if best_effort else "-",
            label=t + (" (no SLO)" if best_effort else ""),
        )
    ax.plot(
        rates, [100.0 * (p["overall"] or 0.0) for p in pts], marker="s", color="black", lw=2, label="overall"
    )
    ax.axhline(90, color="gray", ls="--", lw=0.8)
    ax.axhline(99, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("offered rate (arrivals/s)")
    ax.set_ylabel("attainment (% of arrivals)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, Path(path), plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
