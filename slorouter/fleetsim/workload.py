"""Requests of a scenario: arrival times, lengths, tiers — deterministic under the seed.

* Lengths come from a trace (``splitwise_conv``, ``splitwise_code`` shipped in
  ``slorouter/data/``, or any CSV with ``num_prefill_tokens,num_decode_tokens``), drawn
  uniformly with replacement (in order with ``arrivals: trace``), or from log-normal
  distributions (``synthetic``).
* Arrivals: ``poisson`` at the given total rate; ``gamma`` with coefficient of variation
  ``cv`` (bursty for cv > 1); ``trace``: the trace's own timestamps scaled to the rate
  (cycled when more requests are asked for).
* Tiers by share; a tier with several ``ttft_ms`` draws one per request.
* ``workload.envelope``: a time-varying rate (:mod:`slorouter.fleetsim.envelope`) — the
  Poisson or gamma arrivals above, through a change of time.

Common random numbers: for one seed, every rate gets the same lengths, tiers and TTFTs,
and arrival gaps scaled by ``1/rate`` — so a sweep over rates (and a comparison of
policies) is not blurred by sampling noise.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from slorouter.fleetsim.envelope import Envelope, build
from slorouter.fleetsim.scenario import LengthDist, Scenario, ScenarioError, TierSpec
from slorouter.values import Slo, Tier

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TRACES = ("splitwise_conv", "splitwise_code")


@dataclass(frozen=True, slots=True)
class Trace:
    arrived_at: tuple[float, ...]
    prompt: tuple[int, ...]
    output: tuple[int, ...]

    def p99_prompt(self) -> int:
        return sorted(self.prompt)[int(0.99 * (len(self.prompt) - 1))]


@cache
def load_trace(name_or_path: str) -> Trace:
    p = DATA_DIR / f"{name_or_path}.csv" if name_or_path in TRACES else Path(name_or_path)
    if not p.exists():
        raise ScenarioError(
            name_or_path,
            [("workload.lengths", f"no such trace (built-in: {', '.join(TRACES)}, or a CSV path)")],
        )
    at: list[float] = []
    pr: list[int] = []
    out: list[int] = []
    with p.open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            try:
                at.append(float(row.get("arrived_at") or i))
                pr.append(max(1, int(row["num_prefill_tokens"])))
                out.append(max(1, int(row["num_decode_tokens"])))
            except (KeyError, ValueError) as e:
                raise ScenarioError(str(p), [(f"row {i + 2}", f"bad trace row ({e})")]) from None
    if not pr:
        raise ScenarioError(str(p), [("", "empty trace")])
    return Trace(tuple(at), tuple(pr), tuple(out))


@dataclass(slots=True)
class Workload:
    """Columnar requests, sorted by arrival. ``tier[i]`` indexes ``Workload.tiers``."""

    arrival: list[float]
    prompt: list[int]
    output: list[int]
    tier: list[int]
    variant: list[Tier]  # the request's Tier (its own TTFT draw)
    tiers: tuple[Tier, ...]  # canonical tiers (smallest TTFT), one per TierSpec
    # multi-call workflows (fleetsim/workflows.py); empty when the scenario has none
    deps: list[tuple[int, ...]] = field(default_factory=list)  # calls (ids) this call waits for
    unit: list[int] = field(default_factory=list)  # the id of its workflow's first call (itself if alone)
    deadline_s: list[float | None] = field(default_factory=list)  # its workflow's deadline D

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def has_workflows(self) -> bool:
        return bool(self.deps)

    def units(self) -> int:
        """Units of work: requests, a multi-call workflow counting once."""
        return len(set(self.unit)) if self.unit else len(self.arrival)


def canonical_tiers(specs: tuple[TierSpec, ...]) -> tuple[Tier, ...]:
    slos = [_slo(t, min(t.ttft_ms) if t.ttft_ms else None) for t in specs]
    order = sorted(range(len(specs)), key=lambda i: (slos[i].tightness, i))
    rank = {i: r for r, i in enumerate(order)}
    return tuple(
        Tier(t.name, slos[i], weight=t.weight, rank=rank[i], when_late=t.when_late)
        for i, t in enumerate(specs)
    )


def _slo(t: TierSpec, ttft_ms: float | None) -> Slo:
    ms = 1e-3
    return Slo(
        t.slo_class,
        None if ttft_ms is None else ttft_ms * ms,
        None if t.tpot_ms is None else t.tpot_ms * ms,
        None if t.deadline_ms is None else t.deadline_ms * ms,
    )


def _lognormal(rng: random.Random, mean: float, sigma: float, cap: int) -> int:
    mu = math.log(mean) - sigma * sigma / 2
    return max(1, min(cap, round(rng.lognormvariate(mu, sigma))))


def length_sampler(scn: Scenario) -> tuple[list[int], list[int]] | None:
    """The trace's (prompts, outputs), or None for synthetic lengths."""
    if scn.workload.lengths == "synthetic":
        return None
    t = load_trace(scn.workload.lengths)
    return list(t.prompt), list(t.output)


def envelope_of(scn: Scenario) -> Envelope | None:
    """The scenario's arrival envelope (None: a constant rate)."""
    spec = scn.workload.envelope
    if spec is None:
        return None
    trace = None
    if spec.kind == "diurnal":
        try:
            trace = load_trace(spec.trace).arrived_at
        except ScenarioError as e:
            msg = f"no such trace {spec.trace!r} (built-in: {', '.join(TRACES)}, or a CSV path)"
            raise ScenarioError(scn.source, [("workload.envelope.trace", msg)]) from e
    return build(spec, trace)


def generate(scn: Scenario, rate: float, n: int | None = None, seed: int | None = None) -> Workload:
    """``n`` units of work (default: the scenario's) arriving at ``rate`` units/s in total;
    a unit is a request, or a whole workflow of several calls for a workflow tier with a
    ``workflow:`` shape (its calls follow the arrival's in the columns)."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    w = scn.workload
    n = w.requests if n is None else n
    seed = scn.seed if seed is None else seed
    r_len = random.Random(f"{seed}:lengths")
    r_arr = random.Random(f"{seed}:arrivals")
    r_tier = random.Random(f"{seed}:tiers")
    env = envelope_of(scn)
    tiers = canonical_tiers(scn.tiers)
    cum: list[float] = []
    acc = 0.0
    for t in scn.tiers:
        acc += t.share
        cum.append(acc)
    variants = [
        [Tier(c.name, _slo(s, x), c.weight, c.rank, c.when_late) for x in (s.ttft_ms or (None,))]
        for s, c in zip(scn.tiers, tiers, strict=True)
    ]
    trace = load_trace(w.lengths) if w.lengths != "synthetic" else None
    any_wf = any(t.workflow is not None for t in scn.tiers)
    r_wf = random.Random(f"{seed}:workflows")  # shapes and the later calls' lengths
    deps: list[tuple[int, ...]] = []
    unit: list[int] = []
    dls: list[float | None] = []
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    tier: list[int] = []
    variant: list[Tier] = []
    clock = 0.0
    k_gamma = 1.0 / (w.cv * w.cv)
    span = 0.0
    if trace is not None and w.arrivals == "trace":
        span = trace.arrived_at[-1] - trace.arrived_at[0]
        span += span / max(1, len(trace.arrived_at) - 1)
        scale = (len(trace.arrived_at) / span) / rate if span > 0 else 1.0
    for i in range(n):
        if w.arrivals == "poisson":
            clock += r_arr.expovariate(1.0) / rate
        elif w.arrivals == "gamma":
            clock += r_arr.gammavariate(k_gamma, 1.0 / k_gamma) / rate
        elif trace is not None:
            m = len(trace.arrived_at)
            clock = ((i // m) * span + trace.arrived_at[i % m] - trace.arrived_at[0]) * scale
        else:
            clock += r_arr.expovariate(1.0) / rate
        arrival.append(clock if env is None else env.time_at(clock))
        if trace is None:
            prompt.append(_lognormal(r_len, w.prompt.mean, w.prompt.sigma, w.prompt.max))
            output.append(_lognormal(r_len, w.output.mean, w.output.sigma, w.output.max))
        else:
            j = i % len(trace.prompt) if w.arrivals == "trace" else r_len.randrange(len(trace.prompt))
            prompt.append(trace.prompt[j])
            output.append(trace.output[j])
        ti = min(bisect.bisect_right(cum, r_tier.random() * acc), len(cum) - 1)
        tier.append(ti)
        vs = variants[ti]
        variant.append(vs[r_tier.randrange(len(vs))] if len(vs) > 1 else vs[0])
        if any_wf:
            head = len(arrival) - 1
            spec = scn.tiers[ti]
            calls = spec.workflow.draw(r_wf) if spec.workflow is not None else ((),)
            d = spec.deadline_ms
            dl = None if d is None else d / 1e3 * (len(calls) if spec.deadline_per_call else 1)
            deps.append(())
            unit.append(head)
            dls.append(dl)
            for pre in calls[1:]:
                arrival.append(arrival[head])  # a placeholder: sent when its predecessors finish
                if trace is None:
                    prompt.append(_lognormal(r_wf, w.prompt.mean, w.prompt.sigma, w.prompt.max))
                    output.append(_lognormal(r_wf, w.output.mean, w.output.sigma, w.output.max))
                else:
                    j = r_wf.randrange(len(trace.prompt))
                    prompt.append(trace.prompt[j])
                    output.append(trace.output[j])
                tier.append(ti)
                variant.append(variant[head])
                deps.append(tuple(head + k for k in pre))
                unit.append(head)
                dls.append(dl)
    if any_wf:
        return Workload(arrival, prompt, output, tier, variant, tiers, deps, unit, dls)
    return Workload(arrival, prompt, output, tier, variant, tiers)


def output_sample(scn: Scenario, n: int, seed: int | None = None) -> list[int]:
    """``n`` output lengths from the workload's distribution (length-model warm start),
    from a random stream of their own."""
    rng = random.Random(f"{scn.seed if seed is None else seed}:warmup")
    trace = load_trace(scn.workload.lengths) if scn.workload.lengths != "synthetic" else None
    if trace is None:
        o = scn.workload.output
        return [_lognormal(rng, o.mean, o.sigma, o.max) for _ in range(n)]
    return [trace.output[rng.randrange(len(trace.output))] for _ in range(n)]


def mean_lengths(scn: Scenario) -> tuple[float, float, float]:
    """(mean prompt, mean output, time-weighted mean context per decode slot)."""
    if scn.workload.lengths == "synthetic":
        return _synthetic_means(scn.seed, scn.workload.prompt, scn.workload.output)
    return _trace_means(scn.workload.lengths)


@cache
def _trace_means(name_or_path: str) -> tuple[float, float, float]:
    t = load_trace(name_or_path)
    return _means(list(t.prompt), list(t.output))


@cache
def _synthetic_means(seed: int, prompt: LengthDist, output: LengthDist) -> tuple[float, float, float]:
    # every simulation of a synthetic scenario asks (bins, the router's prior): sample once
    rng = random.Random(f"{seed}:means")
    ps = [_lognormal(rng, prompt.mean, prompt.sigma, prompt.max) for _ in range(20000)]
    os_ = [_lognormal(rng, output.mean, output.sigma, output.max) for _ in range(20000)]
    return _means(ps, os_)


def _means(ps: list[int], os_: list[int]) -> tuple[float, float, float]:
    n = len(ps)
    mp = sum(ps) / n
    mo = sum(os_) / n
    ctx = sum(o * (p + o / 2) for p, o in zip(ps, os_, strict=True)) / sum(os_)
    return mp, mo, ctx


def p99_prompt(scn: Scenario) -> int:
    tr = length_sampler(scn)
    if tr is None:
        return min(
            scn.workload.prompt.max,
            round(scn.workload.prompt.mean * math.exp(2.33 * scn.workload.prompt.sigma)),
        )
    ps = sorted(tr[0])
    return ps[int(0.99 * (len(ps) - 1))]


def check_slos(scn: Scenario) -> None:
    """Refuse SLOs an idle server cannot meet (for the workload's p99 prompt)."""
    prof = scn.profile
    c = prof.step
    p = p99_prompt(scn)
    chunks = 1 if prof.max_batched_tokens <= 0 else -(-p // prof.max_batched_tokens)
    first = chunks * (c.c0_s + c.c_batch_s) + c.c_kv_s * p + c.c_prefill_s * p
    idle = c.at(1, p + 1)
    errs: list[tuple[str, str]] = []
    for i, t in enumerate(scn.tiers):
        if t.ttft_ms and min(t.ttft_ms) / 1e3 < first:
            errs.append(
                (
                    f"tiers[{i}].ttft_ms",
                    f"{min(t.ttft_ms):g} ms cannot be met even by an idle server: the p99 prompt "
                    f"({p} tokens) takes {first * 1e3:.0f} ms to prefill on {prof.name}",
                )
            )
        if t.tpot_ms is not None and t.tpot_ms / 1e3 < idle:
            errs.append(
                (
                    f"tiers[{i}].tpot_ms",
                    f"{t.tpot_ms:g} ms is below one idle decode step ({idle * 1e3:.1f} ms) on {prof.name}",
                )
            )
    if errs:
        raise ScenarioError(scn.source, errs)
