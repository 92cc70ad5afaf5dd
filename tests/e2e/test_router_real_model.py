"""The router's latency model and policies on two real vLLM servers.

* Load levels 1, 4, 8 per server driven through the router: its online model of each server
  (from the engine defaults, learning from the traffic it routes) predicts vLLM's own
  mean inter-token latency over each level within 25 %, rising with the batch.
* Two tiers (tight TPOT = 1.5 x the single-stream step and TTFT = 3 x the single-stream
  TTFT, loose = 4 x and 10 x), one server per tier, the same closed-loop users (as many
  as one server per tier can serve, from vLLM's measured ITL curve: see
  ``choose_users``) through ``round-robin`` and ``polyserve`` (both starting from
  the model state the levels left): polyserve gives the tight tier a higher DSLO attainment
  (the router's own verdict, :func:`slorouter.judge.verdict`). Good requests per second over
  all tiers are printed for both (over the run, and in the users' window), not asserted:
  with polyserve lending the tight server's spare room it was 0.89-1.00x round robin's on
  this 2-core host (docs/real-vllm.md, "Lent room"); the overall win is asserted on
  simulated engines of the same shape (tests/integration/test_lend_closed_loop.py).

The work is done by :mod:`benchmarks.real` (the same functions produce the tables in
docs/real-vllm.md; ``scripts/bench_real_policies.py`` is its entry point).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from benchmarks import real as real_bench
from tests.e2e.conftest import RealVllm

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(900)]  # includes install + start on a clean CI


def bench_module() -> ModuleType:
    return real_bench


ATTEMPTS = 3  # level runs until vLLM's own ITL is a steady curve (see bench.unsteady)


@dataclass(frozen=True)
class Learned:
    state: bytes  # the router's learned models after the levels (a warm-start file)
    levels: dict[str, Any]  # bench.model_levels(): per server and level, vLLM vs the model
    noise: list[list[str]]  # per attempt: why vLLM's own curve was not steady (last: kept)


@pytest.fixture(scope="module")
def learned(vllm_servers: RealVllm, tmp_path_factory: pytest.TempPathFactory) -> Learned:
    """The levels, from a fresh router each attempt, until vLLM's own ITL over them is a
    steady batching curve (a host stall of a few seconds makes one level 2-5x slower on
    this shared machine; no model can be judged against that), at most ``ATTEMPTS``."""
    bench = bench_module()
    noise: list[list[str]] = []
    for i in range(ATTEMPTS):
        state = tmp_path_factory.mktemp("model") / f"state-{i}.json"
        levels: dict[str, Any] = asyncio.run(bench.model_levels(vllm_servers.urls, None, state))
        noise.append(bench.unsteady(levels))
        if not noise[-1]:
            break
    return Learned(state.read_bytes(), levels, noise)


def test_load_levels_through_the_router(learned: Learned) -> None:
    """The levels the model is judged on: every request served, ``least-request`` kept
    ``level`` streams on each server, and the router saw their steps."""
    rows = learned.levels["rows"]
    print(
        "\nlevel  server  vLLM ITL ms  router gaps ms  batch  model mean ms  model p90 ms  support  error %"
    )
    for r in rows:
        print(
            f"{r['level']:5d}  {r['backend']:>6}  {r['vllm_itl_ms']:11.1f}  {r['router_gap_ms']:14.1f}  "
            f"{r['batch']:5.1f}  {r['model_mean_ms']:13.1f}  {r['model_p90_ms']:12.1f}  {r['support']:7d}  "
            f"{r['error_pct']:+7.1f}"
        )
    print(json.dumps(learned.levels["models"], indent=1))
    assert all(r["errors"] == 0 and r["samples"] > 0 for r in rows), rows
    for b in ("e0", "e1"):
        mine = sorted((r for r in rows if r["backend"] == b), key=lambda r: r["level"])
        assert [r["level"] for r in mine] == [1, 4, 8]
        assert mine[0]["batch"] <= 1.5 and 3 <= mine[1]["batch"] <= 4.5 and mine[2]["batch"] >= 6, mine


def test_the_routers_model_of_each_server_follows_vllms_own_itl(learned: Learned) -> None:
    print(f"\nattempts: {len(learned.noise)}; host noise per attempt: {learned.noise}")
    if learned.noise[-1]:
        pytest.fail(f"vLLM's own ITL was not a steady curve in {ATTEMPTS} attempts: {learned.noise}")
    rows = learned.levels["rows"]
    for b in ("e0", "e1"):
        mine = sorted((r for r in rows if r["backend"] == b), key=lambda r: r["level"])
        means = [r["model_mean_ms"] for r in mine]
        itl = [r["vllm_itl_ms"] for r in mine]
        # rises with the batch, and by at least half as much as vLLM's own ITL does from level
        # 1 to 8 (how much that is depends on the host: 1.55x here, 1.2x on a slower CI box)
        assert means == sorted(means), (b, means, itl)
        assert means[-1] / means[0] - 1 >= 0.5 * (itl[-1] / itl[0] - 1), (b, means, itl)
        for r in mine:
            assert abs(r["error_pct"]) <= 25, r


async def test_polyserve_gives_the_tight_tier_higher_attainment_than_round_robin(
    vllm_servers: RealVllm, learned: Learned
) -> None:
    bench = bench_module()
    step_s, ttft_s = bench.single_stream(learned.levels)
    curve = bench.itl_curve(learned.levels)
    res: dict[str, Any] = await bench.compare_policies(
        vllm_servers.urls, step_s, ttft_s, None, learned.state, seconds=20.0, curve=curve
    )
    print(
        f"\nsingle stream: step {res['single_stream_step_ms']:.1f} ms, TTFT {res['single_stream_ttft_ms']:.0f} ms;"
        f" vLLM ITL {res['itl_curve_ms']['a']:.1f} + {res['itl_curve_ms']['per_stream']:.2f} ms per stream;"
        f" tiers {res['tiers']}; users {res['users']}"
    )
    print(
        "policy       tier   requests  met  attainment  TTFT ms  TPOT ms  errors  by server ('-': never dispatched)"
    )
    for p in ("round-robin", "polyserve"):
        for t in ("tight", "loose"):
            x = res[p][t]
            print(
                f"{p:11}  {t:5}  {x['requests']:8d}  {x['met']:3d}  {x['attainment']:10.2f}  "
                f"{x['ttft_mean_ms'] or math.nan:7.0f}  {x['tpot_mean_ms'] or math.nan:7.1f}  {x['errors']:6d}  "
                f"{x['by_backend']}"
            )
        print(f"{'':11}  vLLM's own ITL per server (ms): {res[p]['vllm_itl_ms']}")
    tot = {p: bench.totals(res[p]) for p in ("round-robin", "polyserve")}
    for p, x in tot.items():
        print(
            f"{p:11}  all tiers: {x['good']} good of {x['sent']}, {x['good_per_s']:.2f} good requests/s over "
            f"{res[p]['seconds']:.1f} s; {x['window_good_per_s']:.2f}/s in the users' {res[p]['window_s']:.0f} s"
        )
    rr, ps = res["round-robin"], res["polyserve"]
    for r in (rr, ps):
        assert r["counters_zero"]
        assert all(r[t]["requests"] >= 3 for t in ("tight", "loose")), r
    assert rr["tight"]["errors"] == rr["loose"]["errors"] == 0, rr  # the setup serves everything
    # (polyserve may leave a request in its queue until the client gives up — a miss, counted
    # in its attainment; see "Found on the way" in docs/real-vllm.md)
    # round robin mixes the tiers: loose requests on the tight tier's server too (its tight
    # requests may all land on one server: with one tight user among ten, the order decides)
    assert set(rr["loose"]["by_backend"]) == {"e0", "e1"}, rr
    assert set(ps["tight"]["by_backend"]) - {"-"} == {"e0"}  # polyserve keeps the tight tier in its bin
    assert ps["tight"]["attainment"] > rr["tight"]["attainment"], (ps["tight"], rr["tight"])
