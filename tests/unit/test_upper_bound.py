"""The true upper bound (slorouter.fleetsim.upper_bound): its per-request floor checked request by
request on the engine model, its numbers by hand, its finite-run form, and, on every shipped
scenario, every policy's short sweep against it."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from benchmarks import policies as policies_bench
from slorouter.engine.model import EngineModel
from slorouter.engine.results import Finished, token_times
from slorouter.fleetsim.bound import fluid_reference
from slorouter.fleetsim.fleet import FleetSim, SimOptions, SimResult
from slorouter.fleetsim.scenario import SCENARIO_DIR, load_scenario
from slorouter.fleetsim.sweep import sweep
from slorouter.fleetsim.upper_bound import Shares, StepFloor, kept_mean, request_shares, upper_bound
from slorouter.fleetsim.upper_bound_run import due_shares, finite_bound, finite_ok, run_work
from slorouter.fleetsim.workload import generate
from slorouter.models.profile import StepProfile
from slorouter.models.static import LinearStep
from slorouter.policy import registry

LAMS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.3, 0.3, 0.4))


@dataclass
class Trace:
    batch: dict[int, int]  # step index -> sequences in the step
    start: dict[int, float]  # step index -> its start
    busy: float
    done: list[tuple[Finished, float]]  # (request, submit time)
    ends: list[float]


def drive(prof: StepProfile, reqs: list[tuple[float, int, int]]) -> Trace:
    """Run one engine over ``(submit time, prompt, output)`` requests to the end."""
    eng = EngineModel(prof, keep_history=True)
    reqs = sorted(reqs)
    submit: dict[int, float] = {}
    batch: dict[int, int] = {}
    start: dict[int, float] = {}
    done: list[tuple[Finished, float]] = []
    busy, now, i = 0.0, 0.0, 0
    while True:
        end = eng.plan(now)
        nxt = reqs[i][0] if i < len(reqs) else math.inf
        if end is None and nxt == math.inf:
            break
        if end is None or nxt <= end:
            now = max(now, nxt)
            _, p, n = reqs[i]
            eng.submit(i, p, n, now)
            submit[i] = now
            i += 1
            continue
        now = end
        res = eng.step()
        batch[res.index] = res.batch
        start[res.index] = res.start
        busy += res.end - res.start
        for f in res.finished:
            done.append((f, submit[int(f.rid)]))  # type: ignore[call-overload]
    return Trace(batch, start, busy, done, list(eng.step_ends))


def _profile(
    kv: int, seqs: int, budget: int, c_kv: float, c_batch: float = 5e-5, c_prefill: float = 2.5e-5
) -> StepProfile:
    return StepProfile(
        name="t",
        step=LinearStep(c0_s=0.007, c_batch_s=c_batch, c_kv_s=c_kv, c_prefill_s=c_prefill),
        max_num_seqs=seqs,
        kv_capacity_tokens=kv,
        max_batched_tokens=budget,
    )


def _mixed(seed: int, n: int, rate: float) -> list[tuple[float, int, int]]:
    """Bursts (several at once) and gaps, short and long prompts and outputs."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += 0.0 if rng.random() < 0.3 else rng.expovariate(rate)
        out.append((t, rng.randint(40, 900), rng.choice((1, 2, 5, rng.randint(1, 300)))))
    return out


def _even(seed: int, n: int, rate: float) -> list[tuple[float, int, int]]:
    """Poisson arrivals, prompts of nearly one length: every other sequence in a step holds
    about κ KV tokens, as the floor assumes, so the floor should be nearly met."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append((t, rng.randint(200, 260), rng.randint(1, 100)))
    return out


# a token budget no step exhausts: every sequence in a step is decoding or prefilling its
# whole remainder, so every step a request is in gives it a token, and the steps it was
# in are exactly the ones its token segments name
BIG = 10**7
CASES = {
    # KV-bound with preemptions, small batch limit
    "mixed-kv60k": (_profile(60_000, 64, BIG, 6e-8), _mixed(1, 600, 60.0), False),
    "mixed-preempt": (_profile(12_000, 48, BIG, 1e-5), _mixed(2, 600, 60.0), False),
    "mixed-16seqs": (_profile(400_000, 16, BIG, 2e-6), _mixed(3, 600, 60.0), False),
    "mixed-tinykv": (_profile(9_000, 256, BIG, 6e-8), _mixed(4, 600, 60.0), False),
    # the floor's own assumptions nearly met: it must then be nearly the truth
    "even-30": (_profile(10**6, 256, BIG, 1e-7, 1e-4, 1e-7), _even(1, 1500, 30.0), True),
    "even-100": (_profile(10**6, 256, BIG, 1e-7, 1e-4, 1e-7), _even(1, 1500, 100.0), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_floor_holds_request_by_request_on_the_engine(case: str) -> None:
    prof, reqs, sharp = CASES[case]
    tr = drive(prof, reqs)
    assert len(tr.done) == len(reqs)
    fl = StepFloor.of(prof, min(p for _, p, _ in reqs))
    p = np.array([f.prompt_tokens for f, _ in tr.done], dtype=np.float64)
    n = np.array([f.output_tokens for f, _ in tr.done], dtype=np.float64)
    ttft = np.empty_like(p)  # the tightest SLO each request met: its own TTFT, and the
    slo_win = np.empty_like(p)  # smallest TPOT that puts every later token on time
    ran = np.empty_like(p)  # start of its first step to the end of its last
    seen = np.empty_like(p)  # Σ 1/B over the steps it was in
    for i, (f, at) in enumerate(tr.done):
        times = token_times(tr.ends, f.segments)
        ttft[i] = times[0] - at
        tpot = max(((t - times[0]) / j for j, t in enumerate(times) if j), default=0.0)
        slo_win[i] = ttft[i] + (len(times) - 1) * tpot
        steps = [s.start_step + j for s in f.segments for j in range(s.n_tokens)]
        assert len(steps) == f.output_tokens
        ran[i] = times[-1] - tr.start[steps[0]]
        seen[i] = sum(1.0 / tr.batch[s] for s in steps)
    eps = 1 + 1e-9
    slo = request_shares(fl, p, n, slo_win * eps + 1e-12, ttft * eps + 1e-12)
    # a request that met an SLO is feasible under it
    assert slo.feasible.all()
    # the derivation holds for any interval holding all of a request's steps; with the
    # tightest one (its first step's start to its last token) the c0 share by sequences
    # it got (Σ 1/B_s) is at least the floor k/B̂, request by request
    tight = request_shares(fl, p, n, ran * eps + 1e-12, np.full_like(p, np.inf))
    assert tight.feasible.all()
    assert (seen >= tight.by_seqs * (1 - 1e-9)).all(), float(np.max(tight.by_seqs - seen))
    assert (seen >= slo.by_seqs * (1 - 1e-9)).all()
    # the engine's busy time covers every request's floor, whichever split of c0
    ratios = [tr.busy / slo.cost(fl.c0, lam).sum() for lam in LAMS]
    assert min(ratios) >= 1 - 1e-9, ratios
    if sharp:
        # every request's floor is above the largest-batch one, and within 15 % of the
        # c0 share it got (measured: 5-12 %): the floor is not trivially small
        assert (tight.by_seqs > n / fl.b_max * 1.01).all()
        assert np.median(seen / tight.by_seqs) < 1.15
        busy_tight = tr.busy / tight.cost(fl.c0, (1.0, 0.0, 0.0)).sum()
        assert 1 - 1e-9 <= busy_tight < 1.2


def test_the_floor_by_hand() -> None:
    prof = _profile(100_000, 256, 2048, 1e-6)
    fl = StepFloor.of(prof, 10)
    assert (fl.kappa, fl.b_max) == (10, 256)
    one = np.array([1.0])
    # p = 100, n = 11, TTFT 100 ms, TPOT 10 ms: window 0.2 s, k = 11 steps
    sh: Shares = request_shares(fl, 100 * one, 11 * one, 0.2 * one, 0.1 * one)
    k, kv = 11, 11 * 100 + 11 * 10 / 2
    own = 5e-5 * k + 1e-6 * kv + 2.5e-5 * 100
    e = 5e-5 + 1e-6 * 10
    f = 0.007 + 5e-5 - 1e-6 * 9
    x = (0.2 - k * f - 1e-6 * kv - 2.5e-5 * 100) / e
    b_hat = min(256, 1 + x / k)
    assert 150 < b_hat < 200
    assert sh.own[0] == pytest.approx(own)
    assert sh.by_seqs[0] == pytest.approx(k / b_hat)
    assert sh.by_kv[0] == pytest.approx(kv / 100_000)
    assert sh.by_tokens[0] == pytest.approx((100 + 10) / 2048)
    # no window (best effort): the largest batch
    be = request_shares(fl, 100 * one, 11 * one, np.array([math.inf]), np.array([math.inf]))
    assert be.by_seqs[0] == pytest.approx(11 / 256)
    # a window shorter than the steps alone (11 idle steps ≈ 77 ms > 50 ms): never good
    assert not request_shares(fl, 100 * one, 11 * one, 0.05 * one, 0.05 * one).feasible[0]
    # a first token the prefill cannot give in time even alone
    assert not request_shares(fl, 20_000 * one, 2 * one, 10 * one, 0.3 * one).feasible[0]


def test_kept_mean_gives_the_most_expensive_away() -> None:
    c = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 100.0, 6.0, 7.0, 8.0, 9.0])
    assert kept_mean(c, 0.9) == pytest.approx(45 / 10)  # 100 is free
    assert kept_mean(c, 0.85) == pytest.approx((45 - 0.5 * 9) / 10)  # and half of 9
    assert kept_mean(c, 1.0) == pytest.approx(145 / 10)
    assert kept_mean(np.array([1.0, math.inf]), 0.5) == pytest.approx(0.5)
    assert kept_mean(np.array([1.0, math.inf]), 1.0) == math.inf


SHIPPED = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
# the sweep test's runs: two servers (busy with 400 requests, so the floors account for
# much of their time), stopped 5 s after the last arrival (the default drain is 120 s)
SERVERS, REQUESTS, DRAIN_S = 2, 400, 5.0


def test_every_shipped_scenario_has_a_bound_above_zero_and_below_infinity() -> None:
    assert len(SHIPPED) >= 7
    for name in SHIPPED:
        scn = load_scenario(name)
        b90, b99 = upper_bound(scn, 0.9), upper_bound(scn, 0.99)
        assert 0 < b99.rps_per_server <= b90.rps_per_server < math.inf, name
        # the bound lets a router do what the fluid reference cannot: the chat-batch
        # overshoot of the fluid figure (107.8 %) is inside it
        assert b90.rps_per_server > fluid_reference(scn).rps_per_server, name


@pytest.mark.parametrize("name", ["polyserve-code", "llama70b-conv"])
def test_the_finite_run_form_tends_to_the_long_run_bound(name: str) -> None:
    scn = load_scenario(name)
    ub = upper_bound(scn).rps_per_server
    m = scn.servers
    got = [finite_bound(run_work(scn, generate(scn, 1.0, n), 1.0), m) for n in (1000, 20_000)]
    # a short run allows more (its servers start empty, work due after the last arrival
    # is done in the drain); a long one nearly the long-run bound (sampling: ± a few %)
    assert got[0] > got[1] >= 0.97 * ub
    assert got[1] < 1.1 * ub, (got, ub)


@pytest.mark.parametrize("name", SHIPPED)
def test_no_policy_beats_the_bound(name: str) -> None:
    """Every policy on the scenario's engine, tiers and workload — on a fleet of
    SERVERS (the bound is per server, whatever the fleet), REQUESTS requests a probe,
    runs stopped DRAIN_S after the last arrival — in a short sweep started just above
    the finite-run form of the bound: the work every probe counted good fits in the busy
    time its servers had, and no goodput found is a rate that form rules out."""
    scn = load_scenario(name)
    ub = upper_bound(scn)
    fin = finite_bound(run_work(scn, generate(scn, 1.0, REQUESTS), 1.0), SERVERS, 0.9, DRAIN_S)
    start = (fin * 1.01 if math.isfinite(fin) else ub.rps_per_server) * SERVERS
    for kind in registry.kinds():
        runs: dict[float, FleetSim] = {}

        def run(rate: float, kind: str = kind, runs: dict[float, FleetSim] = runs) -> SimResult:
            opts = SimOptions(drain_s=DRAIN_S)
            sim = FleetSim(scn, kind, rate=rate, servers=SERVERS, requests=REQUESTS, options=opts)
            res = sim.run()
            runs[round(rate, 6)] = sim
            rw = run_work(scn, sim.wl, rate)
            floors, _ = due_shares(rw, rate, math.inf, DRAIN_S)
            good = np.asarray(sim.records.dslo, dtype=bool)
            for lam in (*LAMS, ub.lam):
                assert floors.cost(rw.fl.c0, lam)[good].sum() <= res.summary["busy_server_s"] * (1 + 1e-9)
            return res

        sw = sweep(run, start, rel_tol=0.25, max_probes=2)
        for target, g in sw.goodput.items():
            if g is not None:
                rw = run_work(scn, runs[round(g, 6)].wl, g)
                assert finite_ok(rw, g, SERVERS, target, DRAIN_S), (kind, target, g / SERVERS, fin)


def test_bench_policies_json_compares_polyserve_with_what_users_run() -> None:
    bench = policies_bench
    # every shipped scenario at a constant rate (one with an arrival envelope is for a fleet
    # that scales: scripts/bench_autoscale.py)
    # that scales: scripts/bench_autoscale.py); one with multi-call workflows is compared by
    # service gain at one load (bench.gain_entry)
    constant = {s for s in SHIPPED if load_scenario(s).workload.envelope is None}
    workflows = {s for s in SHIPPED if any(t.workflow is not None for t in load_scenario(s).tiers)}
    assert set(bench.GAIN_SCENARIOS) == workflows and "mixed" in workflows
    assert set(bench.SCENARIOS) == constant - workflows and "diurnal" in set(SHIPPED) - constant

    def pol(g90: float | None, g99: float | None) -> dict[str, Any]:
        return {"goodput_rps_per_server": g90, "goodput99_rps_per_server": g99}

    results = {
        "round-robin": pol(10.0, 9.0),
        "least-request": pol(11.0, 7.0),
        "least-tokens": pol(9.0, 9.5),
        "power-of-two": pol(None, None),
        "random": pol(12.0, 12.0),  # not one of the SLO-blind balancers users run
        "slo-pack": pol(13.0, 11.0),
        "static-partition": pol(12.5, 11.5),
        "polyserve": pol(14.3, 11.5),
        "slo-pack+late-fill": pol(15.0, 12.0),  # an ablation: never the best baseline
    }
    e = bench.summarize("polyserve-code", results, 1000)
    assert (e["best_slo_blind"], e["best_slo_blind_99"]) == ("least-request", "least-tokens")
    assert e["polyserve_vs_best_slo_blind"] == pytest.approx(14.3 / 11.0)
    assert e["polyserve_vs_best_slo_blind_99"] == pytest.approx(11.5 / 9.5)
    assert (e["best_slo_aware"], e["best_slo_aware_99"]) == ("slo-pack", "static-partition")
    assert e["polyserve_vs_best_slo_aware"] == pytest.approx(14.3 / 13.0)
    assert e["polyserve_vs_best_slo_aware_99"] == pytest.approx(1.0)
    assert e["best_baseline"] == "slo-pack"
    scn = load_scenario("polyserve-code")
    assert e["upper_bound_rps_per_server"] == pytest.approx(upper_bound(scn, 0.9).rps_per_server)
    assert e["upper_bound99_rps_per_server"] == pytest.approx(upper_bound(scn, 0.99).rps_per_server)
    assert e["fluid_reference_rps_per_server"] == pytest.approx(fluid_reference(scn).rps_per_server)
    assert e["polyserve_vs_upper_bound"] == pytest.approx(14.3 / e["upper_bound_rps_per_server"])
    # 1,000 requests a probe: a run that short may pass more than the long-run bound
    assert e["finite_run_bound_rps_per_server"] > e["upper_bound_rps_per_server"]
