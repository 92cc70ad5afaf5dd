"""``GET /metrics`` through prometheus_client: the standard content types (text format
by default, OpenMetrics when asked), every family declared once with HELP and TYPE
before its samples, counters named ``*_total`` with no ``_created`` noise, the families
equal to the table in docs/metrics.md, and one registry per router (two routers in one
process keep their own counts)."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from slorouter.sim.server import serve_engines
from tests.promtext import value, values
from tests.routerkit import router_config, run_router

CHAT = {"model": "sim-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


async def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics", headers=headers) as r:
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


def declared(text: str) -> dict[str, str]:
    """``# TYPE`` lines of the text format, checked: each family once, HELP first, every
    sample after its family's TYPE and named after it."""
    types: dict[str, str] = {}
    helped: set[str] = set()
    current = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types and name in helped, line
            types[name] = kind
            current = name
        else:
            m = SAMPLE.match(line)
            assert m, line
            name = m.group(1)
            base = current.removesuffix("_total") if types[current] == "counter" else current
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
                types[current], ("",)
            )
            assert name in {base + s for s in suffixes}, (line, current)
    return types


def documented(autoscaling: bool = False) -> dict[str, str]:
    """The families of the doc's tables (the autoscale table only with ``autoscaling``)."""
    text = DOC.read_text()
    if not autoscaling:
        text = text.split("## With autoscaling")[0]
    rows = re.findall(r"^\| `(slorouter_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", text, re.M)
    return dict(rows)


async def test_content_types_families_and_the_documented_table() -> None:
    async with serve_engines(1, profile="cpu-tiny") as fleet, run_router(router_config(fleet.urls)) as r:
        async with aiohttp.ClientSession() as s, s.post(r.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
        ctype, text = await scrape(r.url)
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        types = declared(text)
        assert types == documented()
        assert all(n.endswith("_total") for n, k in types.items() if k == "counter")
        assert "_created" not in text
        assert value(text, "slorouter_requests_total", tier="standard", status="ok") == 1
        assert value(text, "slorouter_e2e_seconds_count", tier="standard") == 1
        # histogram buckets: cumulative, ``le`` written as the library writes floats
        buckets = values(text, "slorouter_ttft_seconds_bucket")
        by_le = sorted((float(dict(k)["le"]), v) for k, v in buckets.items())
        assert [v for _, v in by_le] == sorted(v for _, v in by_le) and by_le[-1] == (float("inf"), 1)
        assert 'le="1.0"' in text

        ctype, om = await scrape(r.url, "application/openmetrics-text; version=1.0.0")
        assert ctype.startswith("application/openmetrics-text; version=1.0.0; charset=utf-8")
        assert om.endswith("# EOF\n")
        families = {f.name: f.type for f in openmetrics_families(om)}
        assert families == {n.removesuffix("_total"): k for n, k in types.items()}


async def test_two_routers_in_one_process_keep_their_own_counts() -> None:
    async with (
        serve_engines(1, profile="cpu-tiny") as fleet,
        run_router(router_config(fleet.urls)) as a,
        run_router(router_config(fleet.urls)) as b,
    ):
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.post(a.url + "/v1/chat/completions", json=CHAT) as resp:
                    assert resp.status == 200
        _, text_a = await scrape(a.url)
        _, text_b = await scrape(b.url)
    assert value(text_a, "slorouter_requests_total", tier="standard", status="ok") == 2
    assert values(text_b, "slorouter_requests_total") == {}
    assert {f.name for f in text_string_to_metric_families(text_a)} == {
        f.name for f in text_string_to_metric_families(text_b)
    }


async def test_the_autoscale_families_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_METRICS_HOOK_SECRET", "s")
    hooks = {"urls": ["http://127.0.0.1:9/hook"], "secret_env": "TEST_METRICS_HOOK_SECRET"}
    auto = {"enabled": True, "mode": "webhook", "interval_s": 0.05, "webhook": hooks}
    async with serve_engines(1, profile="cpu-tiny") as fleet:
        cfg = router_config(fleet.urls, extra={"autoscale": auto}, policy="polyserve")
        async with run_router(cfg) as r:
            async with (
                aiohttp.ClientSession() as s,
                s.post(r.url + "/v1/chat/completions", json=CHAT) as resp,
            ):
                assert resp.status == 200
            _, text = await scrape(r.url)
    assert declared(text) == documented(autoscaling=True)
    assert value(text, "slorouter_autoscale_advisory") == 0
