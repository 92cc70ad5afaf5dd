"""Config loading: one test per kind of mistake (each message names the file and the
path), plus what a valid file turns into."""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from slorouter.config import ConfigError, RouterConfig, json_schema, load_config, parse_config
from slorouter.config.fields import fields_of, restart_changes
from slorouter.values import SloClass, WhenLate

BASE: dict[str, Any] = {
    "tiers": [
        {"name": "interactive", "class": "latency", "ttft_ms": 1000, "tpot_ms": 50},
        {"name": "standard", "class": "latency", "ttft_ms": 5000, "tpot_ms": 150},
        {"name": "batch", "class": "best_effort"},
    ],
    "backends": [
        {"url": "http://127.0.0.1:8001", "tier": "interactive"},
        {"url": "http://127.0.0.1:8002", "tier": "batch"},
    ],
    "routing": {"default_tier": "standard", "allow_anonymous": True},
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def write(tmp_path: Path, data: Any, name: str = "x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def errors_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    lines = info.value.lines()
    assert str(info.value) == "\n".join(lines)
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return lines


def one_error(path: Path, env: dict[str, str] | None = None) -> str:
    lines = errors_of(path, env)
    assert len(lines) == 1, lines
    return lines[0]


def test_valid_config_loads_with_defaults_and_derived_values(tmp_path: Path) -> None:
    p = write(tmp_path, base())
    cfg = load_config(p, env={})
    assert isinstance(cfg, RouterConfig)
    assert cfg.source == str(p)
    assert cfg.server.port == 8080 and cfg.server.host == "127.0.0.1"
    assert cfg.server.max_body_bytes == 4 * 1024 * 1024
    assert [b.name for b in cfg.backends] == ["b0", "b1"]
    assert cfg.policy.kind == "round-robin" and dict(cfg.policy.params) == {}
    assert cfg.routing.header == "x-slo-tier"
    assert cfg.routing.anonymous_allowed == {"interactive", "standard", "batch"}  # no keys: every tier
    t = cfg.tier("interactive")
    assert t.slo.slo_class is SloClass.LATENCY
    assert t.slo.ttft_s == pytest.approx(1.0) and t.slo.tpot_s == pytest.approx(0.05)
    assert cfg.tier("batch").slo.ttft_s is None


def test_tiers_ranked_by_tightness_ties_in_config_order() -> None:
    raw = base()
    raw["tiers"] = [
        {"name": "loose", "class": "latency", "ttft_ms": 5000, "tpot_ms": 150},
        {"name": "be", "class": "best_effort"},
        {"name": "tight", "class": "latency", "ttft_ms": 500, "tpot_ms": 20},
        {"name": "dl", "class": "deadline", "deadline_ms": 20000},
        {"name": "tight2", "class": "latency", "ttft_ms": 900, "tpot_ms": 20},
    ]
    raw["backends"] = [{"url": "http://127.0.0.1:8001"}]
    raw["routing"]["default_tier"] = "loose"
    cfg = parse_config(raw, env={})
    assert [t.name for t in cfg.tier_values] == ["loose", "be", "tight", "dl", "tight2"]  # config order
    by_rank = sorted(cfg.tier_values, key=lambda t: t.rank)
    assert [t.name for t in by_rank] == ["tight", "tight2", "loose", "dl", "be"]
    assert [t.rank for t in by_rank] == [0, 1, 2, 3, 4]


def test_backend_tier_defaults_to_default_tier_and_url_is_normalized() -> None:
    raw = base()
    raw["backends"] = [{"url": "http://127.0.0.1:8001/", "name": "e1"}]
    cfg = parse_config(raw, env={})
    assert cfg.backends[0].tier == "standard"
    assert cfg.backends[0].url == "http://127.0.0.1:8001"
    assert cfg.backends[0].name == "e1"


def test_single_tier_needs_no_default_tier() -> None:
    raw = {
        "tiers": [{"name": "only", "class": "best_effort"}],
        "backends": [{"url": "http://h:1"}],
        "routing": {"allow_anonymous": True},
    }
    cfg = parse_config(raw, env={})
    assert cfg.routing.default_tier == "only"
    assert cfg.backends[0].tier == "only"


def test_per_tier_timeouts_override_the_top_level() -> None:
    raw = base()
    raw["timeouts"] = {"connect_s": 2, "first_byte_s": 100, "idle_s": 40}
    raw["tiers"][0]["timeouts"] = {"idle_s": 5}
    cfg = parse_config(raw, env={})
    t = cfg.timeouts_for("interactive")
    assert (t.connect_s, t.first_byte_s, t.idle_s) == (2.0, 100.0, 5.0)
    assert cfg.timeouts_for("batch").idle_s == 40.0


def test_profile_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "prof.json").write_text("{}")
    raw = base()
    raw["models"] = {"profile": "prof.json"}
    cfg = load_config(write(tmp_path / "sub", raw), env={})
    assert cfg.models.profile is not None
    assert Path(cfg.models.profile) == tmp_path / "sub" / "prof.json"


# ----------------------------------------------------------------- one test per mistake


def test_out_of_range_number(tmp_path: Path) -> None:
    raw = base()
    raw["tiers"][1]["tpot_ms"] = 0
    line = one_error(write(tmp_path, raw))
    assert line == f"{tmp_path / 'x.yaml'}: tiers[1].tpot_ms: must be > 0, got 0"


def test_out_of_range_third_tier_as_in_the_docs(tmp_path: Path) -> None:
    raw = base()
    raw["tiers"][2] = {"name": "batch", "class": "latency", "ttft_ms": 10, "tpot_ms": -5}
    assert one_error(write(tmp_path, raw)).endswith("tiers[2].tpot_ms: must be > 0, got -5")


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    raw = base()
    raw["server"] = {"prot": 9000}
    raw["tiers"][0]["ttf_ms"] = 3
    lines = errors_of(write(tmp_path, raw))
    assert any(line.endswith("server.prot: unknown key (did you mean 'port'?)") for line in lines), lines
    assert any(line.endswith("tiers[0].ttf_ms: unknown key (did you mean 'ttft_ms'?)") for line in lines)


def test_unknown_top_level_section(tmp_path: Path) -> None:
    raw = base()
    raw["polcy"] = {"kind": "random"}
    assert one_error(write(tmp_path, raw)).endswith(": polcy: unknown key (did you mean 'policy'?)")


def test_wrong_types(tmp_path: Path) -> None:
    raw = base()
    raw["server"] = {"port": "8080", "max_body_bytes": 1.5}
    raw["routing"]["allow_anonymous"] = "yes please"
    raw["backends"][0]["models"] = "llama"
    lines = errors_of(write(tmp_path, raw))
    text = "\n".join(lines)
    assert "server.port: must be an integer, got string '8080'" in text
    assert "server.max_body_bytes: must be an integer, got number 1.5" in text
    assert "routing.allow_anonymous: must be true or false" in text
    assert "backends[0].models: must be a list, got string" in text
    assert len(lines) == 4


def test_bool_is_not_a_number(tmp_path: Path) -> None:
    raw = base()
    raw["tiers"][0]["weight"] = True
    assert one_error(write(tmp_path, raw)).endswith("tiers[0].weight: must be a number, got boolean True")


def test_missing_required_fields(tmp_path: Path) -> None:
    raw = base()
    del raw["backends"]
    del raw["tiers"][0]["class"]
    lines = errors_of(write(tmp_path, raw))
    assert any(line.endswith(": backends: required field is missing") for line in lines), lines
    assert any(line.endswith(": tiers[0].class: required field is missing") for line in lines), lines


def test_empty_lists(tmp_path: Path) -> None:
    raw = base()
    raw["backends"] = []
    assert one_error(write(tmp_path, raw)).endswith(": backends: must have at least 1 item")


def test_bad_enum_value(tmp_path: Path) -> None:
    raw = base()
    raw["backends"][1]["engine"] = "vlm"
    line = one_error(write(tmp_path, raw))
    assert line.endswith(
        "backends[1].engine: must be one of vllm, tgi, openai, got 'vlm' (did you mean 'vllm'?)"
    )


def test_class_needs_its_numbers(tmp_path: Path) -> None:
    raw = base()
    raw["tiers"][0] = {"name": "interactive", "class": "latency", "ttft_ms": 1000}
    raw["tiers"].append({"name": "tools", "class": "deadline"})
    raw["tiers"].append({"name": "free", "class": "best_effort", "tpot_ms": 100})
    lines = errors_of(write(tmp_path, raw))
    assert any(line.endswith("tiers[0].tpot_ms: required for class latency") for line in lines), lines
    assert any(line.endswith("tiers[3].deadline_ms: required for class deadline") for line in lines)
    assert any(
        line.endswith("tiers[4].tpot_ms: a best_effort tier has no SLO numbers; remove it") for line in lines
    )
    assert len(lines) == 3


def test_duplicate_names(tmp_path: Path) -> None:
    raw = base()
    raw["tiers"][2]["name"] = "interactive"
    raw["backends"][0]["name"] = "b1"  # clashes with the default name of backends[1]
    raw["routing"]["keys"] = [
        {"name": "k", "key": "secret-one", "tiers": ["batch"]},
        {"name": "k", "key": "secret-two", "tiers": ["batch"]},
    ]
    lines = errors_of(write(tmp_path, raw))
    assert any(
        line.endswith("tiers[2].name: duplicate tier name 'interactive' (also tiers[0])") for line in lines
    )
    assert any(
        line.endswith("backends[1].name: duplicate backend name 'b1' (also backends[0])") for line in lines
    )
    assert any(
        line.endswith("routing.keys[1].name: duplicate key name 'k' (also routing.keys[0])") for line in lines
    )


def test_duplicate_backend_url_and_duplicate_secret(tmp_path: Path) -> None:
    raw = base()
    raw["backends"][1]["url"] = "http://127.0.0.1:8001/"
    raw["routing"]["keys"] = [
        {"name": "a", "key": "same-secret", "tiers": ["batch"]},
        {"name": "b", "key": "same-secret", "tiers": ["batch"]},
    ]
    lines = errors_of(write(tmp_path, raw))
    assert any(line.endswith("backends[1].url: same server as backends[0]") for line in lines), lines
    assert any(line.endswith("routing.keys[1]: same secret as routing.keys[0]") for line in lines), lines
    assert not any("same-secret" in line for line in lines)  # secrets are never printed


def test_references_to_unknown_tiers(tmp_path: Path) -> None:
    raw = base()
    raw["backends"][0]["tier"] = "interactve"
    raw["routing"]["default_tier"] = "gold"
    raw["routing"]["anonymous_tiers"] = ["silver"]
    raw["routing"]["keys"] = [
        {"name": "k", "key": "s3cret", "tiers": ["batch", "bronze"], "default_tier": "x"}
    ]
    raw["routing"]["aliases"] = {"fast": {"model": "m", "tier": "fastest"}}
    lines = errors_of(write(tmp_path, raw))
    want = [
        "backends[0].tier: unknown tier 'interactve' (did you mean 'interactive'?)",
        "routing.default_tier: unknown tier 'gold'",
        "routing.anonymous_tiers[0]: unknown tier 'silver'",
        "routing.keys[0].tiers[1]: unknown tier 'bronze'",
        "routing.keys[0].default_tier: unknown tier 'x'",
        "routing.aliases.fast.tier: unknown tier 'fastest'",
    ]
    for w in want:
        assert any(w in line for line in lines), (w, lines)
    assert len(lines) == len(want)


def test_key_default_tier_must_be_one_of_its_tiers(tmp_path: Path) -> None:
    raw = base()
    raw["routing"]["keys"] = [{"name": "k", "key": "s", "tiers": ["batch"], "default_tier": "interactive"}]
    line = one_error(write(tmp_path, raw))
    assert line.endswith("routing.keys[0].default_tier: 'interactive' is not in this key's tiers")


def test_default_tier_required_with_several_tiers(tmp_path: Path) -> None:
    raw = base()
    del raw["routing"]["default_tier"]
    assert ": routing.default_tier: required when several tiers exist" in one_error(write(tmp_path, raw))


def test_key_env_not_set_names_the_variable(tmp_path: Path) -> None:
    raw = base()
    raw["routing"]["keys"] = [{"name": "k", "key_env": "SLOROUTER_TEST_KEY_X", "tiers": ["batch"]}]
    p = write(tmp_path, raw)
    line = one_error(p, env={})
    assert line.endswith(
        "routing.keys[0].key_env: environment variable SLOROUTER_TEST_KEY_X is not set (or empty)"
    )
    cfg = load_config(p, env={"SLOROUTER_TEST_KEY_X": "tok-123"})
    assert cfg.routing.keys[0].key == "tok-123"
    assert "tok-123" not in repr(cfg)  # the secret never shows in a repr (logs)


def test_key_needs_exactly_one_source(tmp_path: Path) -> None:
    raw = base()
    raw["routing"]["keys"] = [
        {"name": "a", "tiers": ["batch"]},
        {"name": "b", "key": "x", "key_env": "Y", "tiers": ["batch"]},
    ]
    lines = errors_of(write(tmp_path, raw))
    assert any(
        line.endswith("routing.keys[0]: one of key_env (an environment variable name) or key is required")
        for line in lines
    )
    assert any(line.endswith("routing.keys[1]: give either key or key_env, not both") for line in lines)


def test_bad_backend_url(tmp_path: Path) -> None:
    raw = base()
    raw["backends"][0]["url"] = "127.0.0.1:8001"
    raw["backends"][1]["url"] = "http://h:notaport"
    lines = errors_of(write(tmp_path, raw))
    assert any("backends[0].url: must be an http:// or https:// URL with a host" in line for line in lines)
    assert any("backends[1].url: not a valid URL" in line for line in lines)


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    p = write(tmp_path, "tiers:\n  - name: a\n    class latency\n  x: [\n")
    line = one_error(p)
    assert line.startswith(f"{p}: line 4, column 3: YAML syntax error: could not find expected ':'")
    assert "line 3" in line


def test_empty_file(tmp_path: Path) -> None:
    p = write(tmp_path, "# nothing but a comment\n")
    assert one_error(p) == f"{p}: the file is empty (expected at least `tiers:` and `backends:`)"


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    assert one_error(write(tmp_path, "- a\n- b\n")).endswith(
        "the top level must be a mapping of sections, got list"
    )


def test_duplicate_yaml_keys(tmp_path: Path) -> None:
    text = yaml.safe_dump(base(), sort_keys=False) + "backends: []\n"
    line = one_error(write(tmp_path, text))
    assert "duplicate key 'backends' (first at line" in line


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    assert one_error(p) == f"{p}: file not found"


def test_missing_profile_file(tmp_path: Path) -> None:
    raw = base()
    raw["models"] = {"profile": "missing.json"}
    assert "models.profile: file not found:" in one_error(write(tmp_path, raw))


def test_autoscale_limits_are_validated(tmp_path: Path) -> None:
    raw = base()
    raw["autoscale"] = {
        "enabled": True,
        "min_backends": 4,
        "max_backends": 2,
        "idle_s": 0,
        "scale_in_utilization": 0.9,
        "tiers": {"interactive": {"min_servers": 3, "max_servers": 1}, "nope": {}},
        "webhook": {"urls": ["ftp://x"], "backoff_s": 2, "backoff_max_s": 1},
    }
    lines = errors_of(write(tmp_path, raw))
    want = [
        "autoscale.max_backends: must be >= min_backends (4)",
        "autoscale.idle_s: must be > 0, got 0",
        "autoscale.scale_in_utilization: must be below target_utilization (0.85): the hysteresis band",
        "autoscale.tiers.interactive.max_servers: must be >= min_servers (3)",
        "autoscale.tiers.nope: unknown tier 'nope'",
        "autoscale.webhook.urls[0]: must be an http:// or https:// URL with a host",
        "autoscale.webhook.backoff_max_s: must be >= backoff_s (2)",
    ]
    for w in want:
        assert any(w in line for line in lines), (w, lines)
    assert all(line.startswith(str(tmp_path)) for line in lines)  # the file is named
    assert not any("not implemented" in line for line in lines)


def test_autoscaling_is_accepted_with_state_sync(tmp_path: Path) -> None:
    """Several router processes share the scaler (the leader runs it): no refusal."""
    raw = base()
    raw["autoscale"] = {"enabled": True}
    raw["state"] = {"sync": {"kind": "redis", "url": "redis://127.0.0.1:6379/0"}}
    cfg = load_config(write(tmp_path, raw), env={})
    assert cfg.autoscale.enabled and cfg.state.sync.kind.value == "redis"


def test_autoscale_enabled_is_accepted_and_webhook_mode_needs_urls_and_a_secret(tmp_path: Path) -> None:
    raw = base()
    raw["autoscale"] = {"enabled": True}
    cfg = load_config(write(tmp_path, raw), env={})
    assert cfg.autoscale.enabled and cfg.autoscale.mode.value == "advisory"
    raw["autoscale"] = {"enabled": True, "mode": "webhook", "webhook": {"secret_env": "HOOK_KEY"}}
    lines = errors_of(write(tmp_path, raw), env={})
    assert any(
        line.endswith(
            "autoscale.webhook.urls: mode webhook needs at least one URL (or set autoscale.mode: advisory)"
        )
        for line in lines
    ), lines
    assert any("autoscale.webhook.secret_env: environment variable HOOK_KEY is not set" in x for x in lines)
    raw["autoscale"]["webhook"]["urls"] = ["http://127.0.0.1:9/hook"]
    cfg = load_config(write(tmp_path, raw), env={"HOOK_KEY": "s3cret"})
    assert cfg.autoscale.webhook.urls == ("http://127.0.0.1:9/hook",)
    raw["autoscale"]["max_backends"] = 2
    raw["autoscale"]["tiers"] = {"interactive": {"min_servers": 2}, "standard": {"min_servers": 1}}
    line = one_error(write(tmp_path, raw), env={"HOOK_KEY": "s3cret"})
    assert line.endswith("autoscale.max_backends: must be >= the sum of the tiers' min_servers (3)")


def test_every_error_is_listed_in_file_order(tmp_path: Path) -> None:
    raw = {
        "server": {"port": 0},
        "tiers": [
            {"name": "a", "class": "latency", "ttft_ms": -1, "tpot_ms": 10},
            {"name": "b", "class": "nope"},
        ],
        "backends": [{"url": "http://h:1", "tier": "c"}],
        "policy": {"kind": 3},
        "routing": {"allow_anonymous": True},
    }
    lines = errors_of(write(tmp_path, raw))
    paths = [line.split(": ")[1] for line in lines]
    assert paths == [
        "server.port",
        "tiers[0].ttft_ms",
        "tiers[1].class",
        "backends[0].tier",
        "policy.kind",
        "routing.default_tier",  # a section absent from the file comes last
    ]


def test_the_shipped_examples_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "config"
    env = {f"SLOROUTER_KEY_{n}": f"test-{n}" for n in ("FRONTEND", "PARTNER", "AGENTS", "BATCH")}
    example = load_config(root / "example.yaml", env={})
    assert example.routing.allow_anonymous
    assert [b.url for b in example.backends] == [f"http://127.0.0.1:{p}" for p in range(8001, 8005)]
    assert example.server.host == "127.0.0.1" and example.server.port == 8080
    prod = load_config(root / "production.yaml", env=env)
    assert not prod.routing.allow_anonymous
    assert {t.slo.slo_class for t in prod.tier_values} == set(SloClass)
    assert {b.engine.value for b in prod.backends} == {"vllm", "tgi"}
    assert all(k.key_env for k in prod.routing.keys)  # no literal secrets in the production example


def test_non_finite_numbers(tmp_path: Path) -> None:
    raw = base()
    raw["tiers"][0]["ttft_ms"] = float("inf")
    assert one_error(write(tmp_path, raw)).endswith("tiers[0].ttft_ms: must be a finite number, got inf")


def test_unhashable_yaml_key(tmp_path: Path) -> None:
    line = one_error(write(tmp_path, "tiers:\n  ? [a, b]\n  : 1\n"))
    assert "line 2, column 5: YAML syntax error: found unhashable key" in line


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = (
        "tiers:\n  - &lat {name: a, class: latency, ttft_ms: 1000, tpot_ms: 50}\n"
        "  - {<<: *lat, name: b, tpot_ms: 20}\n"
        "backends: [{url: 'http://h:1'}]\nrouting: {default_tier: a, allow_anonymous: true}\n"
    )
    cfg = load_config(write(tmp_path, text), env={})
    b = cfg.tier("b")
    assert b.slo.tpot_s == pytest.approx(0.02) and b.slo.ttft_s == pytest.approx(1.0)
    assert b.rank == 0


def _all_fields(cls: type, prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted name, is a section) of every YAML field, depth first."""
    out: list[tuple[str, bool]] = []
    for fi in fields_of(cls):
        args = typing.get_args(fi.tp)
        nested = [t for t in (fi.tp, *args, *(a for x in args for a in typing.get_args(x))) if _section(t)]
        out.append((prefix + fi.name, _section(fi.tp)))
        for t in nested:
            out += _all_fields(t, prefix + fi.name + ".")
    return out


def _section(t: object) -> bool:
    return dataclasses.is_dataclass(t) and isinstance(t, type)


def test_example_documents_every_field_with_its_default() -> None:
    """Each field of the format appears in config/example.yaml, and each leaf field's
    comment (its line or the comment lines right after it) gives its default or says it
    is required. Commented-out examples count."""
    lines = (Path(__file__).resolve().parents[2] / "config" / "example.yaml").read_text().splitlines()
    fields = _all_fields(RouterConfig)
    assert len(fields) > 60
    missing = []
    for dotted, is_section in fields:
        leaf = re.compile(rf"^[\s#-]*{re.escape(dotted.rsplit('.', 1)[-1])}:")
        at = [i for i, line in enumerate(lines) if leaf.match(line)]
        documented = False
        for i in at:
            j = i + 1
            while (
                j < len(lines) and re.match(r"\s*#", lines[j]) and not re.match(r"\s*#\s*-?\s*\w+:", lines[j])
            ):
                j += 1
            documented = (
                documented or is_section or bool(re.search(r"\((default|required)", " ".join(lines[i:j])))
            )
        if not documented:
            missing.append(dotted)
    assert missing == []


def test_no_keys_and_no_anonymous_serves_nobody(tmp_path: Path) -> None:
    raw = base()
    del raw["routing"]["allow_anonymous"]
    line = one_error(write(tmp_path, raw))
    assert line.endswith(
        "routing.allow_anonymous: no request could be served: set it to true, or declare routing.keys"
    )


def test_restart_only_fields_come_from_the_declarations() -> None:
    """A reload warns about exactly the fields declared ``restart=True``, by path, in
    declaration order; a section declared so (``autoscale``) compares as a whole."""
    old = parse_config(base(), "<test>")
    raw = base()
    raw["server"] = {"host": "0.0.0.0", "port": 9000, "client_read_timeout_s": 5.0, "shutdown_grace_s": 1.0}
    raw["models"] = {"latency_quantile": 0.5, "state_save_interval_s": 5.0}
    raw["autoscale"] = {"idle_s": 10.0}
    raw["health"] = {"interval_s": 9.0}
    raw["policy"] = {"kind": "least-request"}
    raw["timeouts"] = {"idle_s": 1.0, "keepalive_s": 2.0}
    assert restart_changes(old, parse_config(raw, "<test>")) == [
        "server.host",
        "server.port",
        "server.shutdown_grace_s",
        "timeouts.keepalive_s",
        "models.latency_quantile",
        "autoscale",
    ]
    assert restart_changes(old, parse_config(base(), "<test>")) == []
    schema = json_schema()["properties"]
    assert "applied at start" in schema["server"]["properties"]["port"]["description"]
    assert "applied at start" not in schema["health"]["properties"]["interval_s"]["description"]


def test_when_late_defaults_to_reject_and_the_old_key_says_what_replaced_it(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, base()), env={})
    assert cfg.tier("interactive").when_late is WhenLate.REJECT and cfg.tier("interactive").rejects_late
    assert not cfg.tier("batch").rejects_late  # best effort is never late
    assert cfg.policy.max_queued is None and cfg.policy.max_queue_wait_s is None  # from the tiers
    raw = base()
    raw["tiers"][1]["when_late"] = "best_effort"
    assert load_config(write(tmp_path, raw), env={}).tier("standard").when_late is WhenLate.BEST_EFFORT
    raw = base()
    raw["tiers"][0]["reject_when_late"] = True
    assert one_error(write(tmp_path, raw)).endswith(
        "tiers[0].reject_when_late: replaced by when_late: reject | best_effort "
        "(reject_when_late: true is when_late: reject, the default now; false is when_late: best_effort)"
    )
    raw = base()
    raw["tiers"][2]["when_late"] = "reject"
    assert one_error(write(tmp_path, raw)).endswith(
        "tiers[2].when_late: a best_effort tier is never late; remove it"
    )
    raw = base()
    raw["tiers"][0]["when_late"] = "drop"
    assert "tiers[0].when_late: " in one_error(write(tmp_path, raw))
