"""Fleet-simulator scenarios: one YAML file names the engine, the fleet, the tiers and the
workload. Errors name the file and the path (``x.yaml: tiers[2].tpot_ms: must be > 0``).

Format (every key but ``tiers`` optional)::

    name: polyserve-conv
    seed: 1
    engine:
      profile: h100-8b            # built-in (h100-8b, h100-70b, cpu-tiny) or profile JSON path
      max_batched_tokens: 2048    # overrides of the profile
      max_num_seqs: 256
      noise: 0.0                  # log-normal step-time noise (sigma)
      scheduling: fcfs            # the engines' waiting queue: fcfs | priority (vLLM's
                                  # --scheduling-policy; each request's priority = its due
                                  # time, as fleetsim/events.py sets it)
    fleet:
      servers: 20
      bins: auto                  # auto (servers per tier ∝ share × fluid cost) | {tier: count}
    tiers:
      - {name: t20, class: latency, tpot_ms: 20, ttft_ms: [300, 500, 1000], share: 0.1}
      - {name: batch, class: best_effort, share: 0.5}
      - {name: agents, class: workflow, deadline_ms: 20000, deadline_per_call: true, share: 0.2,
         workflow: {shape: chain, calls: [3, 5]}}    # multi-call workflows: fleetsim/workflows.py
      # when_late: reject | best_effort (latency/deadline tiers; default reject, as the router)
    workload:
      lengths: splitwise_conv     # built-in trace name, a CSV path, or "synthetic"
      prompt: {mean: 1000, sigma: 1.0, max: 8000}    # synthetic: log-normal
      output: {mean: 200, sigma: 1.0, max: 2000}
      arrivals: poisson           # poisson | gamma | trace
      cv: 2.0                     # gamma: coefficient of variation of inter-arrival times
      requests: 30000             # requests per run
      rate_rps: 150               # total arrival rate when --rate is not given
      max_tokens: null            # the clients' max_tokens (bound cap), if any
      length_warmup: 2000         # output lengths the length model has seen at start
      envelope:                   # optional: a time-varying rate (poisson or gamma arrivals)
        kind: diurnal             # the trace's arrival pattern, rescaled to swing × between
        trace: splitwise_conv     #   trough and peak, its span mapped onto period_s, repeated;
        swing: 4                  #   --rate / rate_rps is then the mean rate
        period_s: 3600
        smooth_s: 300             # centred moving average over the trace's own time
      # envelope: {kind: steps, steps: [[0, 1], [600, 3], [900, 1]]}
      #                           # [from s, × rate]; the last one holds
    policies:                     # optional params per policy kind
      polyserve: {placement: spread}

``ttft_ms`` may be a list: each request draws one uniformly (PolyServe's mix).
A scenario may only assign SLOs an idle server can meet (checked at load against the
workload's p99 prompt: first token within the smallest TTFT, one idle step within TPOT).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from slorouter.engine.profiles import load_profile
from slorouter.engine.waiting import SCHEDULING
from slorouter.fleetsim.reader import Reader
from slorouter.fleetsim.workflows import WorkflowShape, parse_shape
from slorouter.models.profile import ProfileError, StepProfile
from slorouter.values import SloClass, WhenLate

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "config" / "scenarios"


class ScenarioError(ValueError):
    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        super().__init__("\n".join(f"{source}: {p}: {m}" if p else f"{source}: {m}" for p, m in errors))


@dataclass(frozen=True, slots=True)
class TierSpec:
    name: str
    slo_class: SloClass
    share: float
    ttft_ms: tuple[float, ...] = ()
    tpot_ms: float | None = None
    deadline_ms: float | None = None
    weight: float = 1.0
    when_late: WhenLate = WhenLate.REJECT
    workflow: WorkflowShape | None = None  # workflow tiers: the calls of one workflow (fleetsim/workflows.py)
    deadline_per_call: bool = False  # workflow tiers: the deadline is deadline_ms × calls


@dataclass(frozen=True, slots=True)
class LengthDist:
    mean: float
    sigma: float = 1.0
    max: int = 8192


DEFAULT_PROMPT = LengthDist(1000.0)
DEFAULT_OUTPUT = LengthDist(200.0, 1.0, 2048)


@dataclass(frozen=True, slots=True)
class EnvelopeSpec:
    """A time-varying arrival rate (built by :mod:`slorouter.fleetsim.envelope`)."""

    kind: str  # diurnal | steps
    trace: str = "splitwise_conv"  # diurnal: whose arrival pattern
    swing: float = 4.0  # diurnal: peak / trough
    period_s: float = 3600.0  # diurnal: the pattern's length in the run (it repeats)
    smooth_s: float = 300.0  # diurnal: moving-average window, in the trace's own seconds
    steps: tuple[tuple[float, float], ...] = ()  # steps: (from s, multiplier of the rate)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    lengths: str = "splitwise_conv"
    prompt: LengthDist = DEFAULT_PROMPT
    output: LengthDist = DEFAULT_OUTPUT
    arrivals: str = "poisson"
    cv: float = 2.0
    requests: int = 30_000
    rate_rps: float | None = None
    max_tokens: int | None = None
    length_warmup: int = 2000
    envelope: EnvelopeSpec | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    profile: StepProfile
    tiers: tuple[TierSpec, ...]
    servers: int = 20
    bins: Mapping[str, int] | None = None  # None: auto
    workload: WorkloadSpec = WorkloadSpec()
    seed: int = 0
    noise: float = 0.0
    scheduling: str = "fcfs"  # the engines' (engine/waiting.py): fcfs | priority
    policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "<scenario>"

    def with_servers(self, n: int) -> Scenario:
        return replace(self, servers=n, bins=None if self.bins is None else self.bins)


def _tier(raw: Any, path: str, errs: list[tuple[str, str]]) -> TierSpec | None:
    r = Reader(raw, path, errs)
    name = r.str_("name", "")
    if not name:
        errs.append((r.at("name"), "required"))
    cls_s = r.str_("class", "latency", tuple(c.value for c in SloClass))
    share = r.num("share", None, ge=0)
    if share is None:
        errs.append((r.at("share"), "required (fraction of the traffic)"))
    ttft = r.get("ttft_ms")
    ttfts: tuple[float, ...] = ()
    if ttft is not None:
        vals = ttft if isinstance(ttft, list) else [ttft]
        if not vals or any(isinstance(x, bool) or not isinstance(x, int | float) or x <= 0 for x in vals):
            errs.append((r.at("ttft_ms"), "must be a number > 0 or a non-empty list of them"))
        else:
            ttfts = tuple(float(x) for x in vals)
    tpot = r.num("tpot_ms", None, gt=0)
    deadline = r.num("deadline_ms", None, gt=0)
    weight = r.num("weight", 1.0, gt=0)
    when_late = WhenLate(r.str_("when_late", WhenLate.REJECT.value, tuple(w.value for w in WhenLate)))
    if "reject_when_late" in r.raw:
        r.seen.add("reject_when_late")
        errs.append((r.at("reject_when_late"), "replaced by when_late: reject | best_effort"))
    wf_raw, per_call = r.get("workflow"), r.get("deadline_per_call")
    r.done()
    cls = SloClass(cls_s)
    shape = None if wf_raw is None else parse_shape(wf_raw, r.at("workflow"), errs)
    if (wf_raw is not None or per_call is not None) and cls is not SloClass.WORKFLOW:
        errs.append(
            (r.at("workflow" if wf_raw is not None else "deadline_per_call"), "only for class workflow")
        )
    if per_call is not None and not isinstance(per_call, bool):
        errs.append((r.at("deadline_per_call"), "must be true or false"))
    if cls is SloClass.LATENCY and (not ttfts or tpot is None):
        errs.append((path, "a latency tier needs ttft_ms and tpot_ms"))
    if cls in (SloClass.DEADLINE, SloClass.WORKFLOW) and deadline is None:
        errs.append((r.at("deadline_ms"), f"required for class {cls.value}"))
    if share is None or not name:
        return None
    spec = TierSpec(name, cls, float(share), ttfts, tpot, deadline, float(weight), when_late)
    return replace(spec, workflow=shape, deadline_per_call=per_call is True)


def _dist(raw: Any, path: str, errs: list[tuple[str, str]], dflt: LengthDist) -> LengthDist:
    r = Reader(raw, path, errs)
    d = LengthDist(
        float(r.num("mean", dflt.mean, gt=0)),
        float(r.num("sigma", dflt.sigma, ge=0)),
        r.int_("max", dflt.max, 1),
    )
    r.done()
    return d


def _envelope(raw: Any, path: str, errs: list[tuple[str, str]], arrivals: str) -> EnvelopeSpec | None:
    if raw is None:
        return None
    r = Reader(raw, path, errs)
    kind = r.str_("kind", "", ("diurnal", "steps"))
    if not kind and "kind" not in r.raw:
        errs.append((r.at("kind"), "required: diurnal or steps"))
    if arrivals == "trace":
        errs.append((path, "needs arrivals poisson or gamma (trace arrivals keep their own timestamps)"))
    if kind == "steps":
        steps: list[tuple[float, float]] = []
        raw_steps = r.get("steps")
        ok = isinstance(raw_steps, list) and bool(raw_steps)
        for s in raw_steps if isinstance(raw_steps, list) else ():
            if (
                not isinstance(s, list | tuple)
                or len(s) != 2
                or any(isinstance(x, bool) or not isinstance(x, int | float) for x in s)
                or s[0] < 0
                or s[1] <= 0
            ):
                ok = False
                break
            steps.append((float(s[0]), float(s[1])))
        if ok and (steps[0][0] != 0 or any(b[0] <= a[0] for a, b in itertools.pairwise(steps))):
            ok = False
        if not ok:
            msg = "a non-empty list of [from_s, multiplier > 0], from 0, times increasing"
            errs.append((r.at("steps"), msg))
        r.done()
        return EnvelopeSpec("steps", steps=tuple(steps)) if ok else None
    env = EnvelopeSpec(
        "diurnal",
        trace=r.str_("trace", "splitwise_conv"),
        swing=float(r.num("swing", 4.0, ge=1)),
        period_s=float(r.num("period_s", 3600.0, gt=0)),
        smooth_s=float(r.num("smooth_s", 300.0, ge=0)),
    )
    r.done()
    return env if kind == "diurnal" else None


def parse_scenario(raw: Any, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    errs: list[tuple[str, str]] = []
    top = Reader(raw, "", errs)
    name = top.str_("name", Path(source).stem)
    seed = top.int_("seed", 0)
    eng = Reader(top.get("engine"), "engine", errs)
    prof_name = eng.str_("profile", "h100-8b")
    overrides = {
        k: eng.int_(k, None, 1) for k in ("max_batched_tokens", "max_num_seqs", "kv_capacity_tokens")
    }
    noise = float(eng.num("noise", 0.0, ge=0))
    scheduling = eng.str_("scheduling", "fcfs", SCHEDULING)
    eng.done()
    profile: StepProfile | None = None
    try:
        p = Path(prof_name)
        if base_dir is not None and p.suffix == ".json" and not p.is_absolute():
            p = base_dir / p
        profile = load_profile(str(p) if p.suffix == ".json" else prof_name)
        profile = replace(profile, **{k: v for k, v in overrides.items() if v is not None})
    except ProfileError as e:
        errs.append(("engine.profile", str(e)))
    fleet = Reader(top.get("fleet"), "fleet", errs)
    servers = fleet.int_("servers", 20, 1)
    bins_raw = fleet.get("bins")
    bins: dict[str, int] | None = None
    if isinstance(bins_raw, Mapping):
        bins = {}
        for k, v in bins_raw.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                errs.append((f"fleet.bins.{k}", "must be an integer >= 0"))
            else:
                bins[str(k)] = v
    elif bins_raw not in (None, "auto"):
        errs.append(("fleet.bins", "must be auto or a mapping tier -> servers"))
    fleet.done()
    tiers_raw = top.get("tiers")
    tiers: list[TierSpec] = []
    if not isinstance(tiers_raw, list) or not tiers_raw:
        errs.append(("tiers", "required: a non-empty list"))
    else:
        for i, t in enumerate(tiers_raw):
            ts = _tier(t, f"tiers[{i}]", errs)
            if ts is not None:
                tiers.append(ts)
    names = [t.name for t in tiers]
    for n in set(names):
        if names.count(n) > 1:
            errs.append(("tiers", f"duplicate tier name {n!r}"))
    if tiers and sum(t.share for t in tiers) <= 0:
        errs.append(("tiers", "the shares must not all be 0"))
    if bins is not None:
        for k in bins:
            if k not in names:
                errs.append((f"fleet.bins.{k}", f"unknown tier (tiers: {', '.join(names)})"))
        if sum(bins.values()) != servers:
            errs.append(("fleet.bins", f"counts add up to {sum(bins.values())}, fleet.servers is {servers}"))
    wl = Reader(top.get("workload"), "workload", errs)
    arrivals = wl.str_("arrivals", "poisson", ("poisson", "gamma", "trace"))
    w = WorkloadSpec(
        lengths=wl.str_("lengths", "splitwise_conv"),
        prompt=_dist(wl.get("prompt"), "workload.prompt", errs, DEFAULT_PROMPT),
        output=_dist(wl.get("output"), "workload.output", errs, DEFAULT_OUTPUT),
        arrivals=arrivals,
        cv=float(wl.num("cv", 2.0, gt=0)),
        requests=wl.int_("requests", 30_000, 1),
        rate_rps=wl.num("rate_rps", None, gt=0),
        max_tokens=wl.int_("max_tokens", None, 1),
        length_warmup=wl.int_("length_warmup", 2000, 0),
        envelope=_envelope(wl.get("envelope"), "workload.envelope", errs, arrivals),
    )
    wl.done()
    pol_raw = top.get("policies")
    policies: dict[str, Mapping[str, Any]] = {}
    if isinstance(pol_raw, Mapping):
        for k, v in pol_raw.items():
            if not isinstance(v, Mapping):
                errs.append((f"policies.{k}", "must be a mapping of params"))
            else:
                policies[str(k)] = dict(v)
    elif pol_raw is not None:
        errs.append(("policies", "must be a mapping kind -> params"))
    top.done()
    if errs or profile is None:
        raise ScenarioError(source, errs)
    return Scenario(
        name=name,
        profile=profile,
        tiers=tuple(tiers),
        servers=servers,
        bins=bins,
        workload=w,
        seed=seed,
        noise=noise,
        scheduling=scheduling,
        policies=policies,
        source=source,
    )


def resolve_path(name_or_path: str) -> Path:
    """A scenario by path, or by name in ``config/scenarios/``."""
    p = Path(name_or_path)
    if p.exists():
        return p
    cand = SCENARIO_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if cand.exists():
        return cand
    known = sorted(x.stem for x in SCENARIO_DIR.glob("*.yaml")) if SCENARIO_DIR.exists() else []
    raise ScenarioError(
        name_or_path, [("", f"no such scenario file (shipped scenarios: {', '.join(known) or 'none'})")]
    )


def load_scenario(name_or_path: str) -> Scenario:
    p = resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ScenarioError(str(p), [("", f"not valid YAML: {e}")]) from None
    return parse_scenario(raw, str(p), p.parent)
