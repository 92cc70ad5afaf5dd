"""The JSON Schema: valid configs validate, shape mistakes are rejected by both the schema
and the loader, and the schema's defaults are the dataclasses' defaults.

A tiny validator for exactly the keywords the schema emits is included (no jsonschema
dependency); it refuses any keyword it does not know, so the subset stays honest."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from slorouter.config import ConfigError, json_schema, parse_config
from slorouter.config.fields import _json_default, fields_of
from slorouter.config.model import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
_ANNOTATIONS = {"$schema", "title", "description", "default"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Errors of ``value`` against ``schema`` (the draft 2020-12 subset we emit)."""
    errs: list[str] = []
    for kw, arg in schema.items():
        if kw in _ANNOTATIONS or kw in ("properties", "required"):
            continue
        if kw == "type":
            if not _TYPES[arg](value):
                return [f"{path}: not {arg}"]
        elif kw == "enum":
            if value not in arg:
                errs.append(f"{path}: not in enum")
        elif kw == "anyOf":
            if all(validate(s, value, path) for s in arg):
                errs.append(f"{path}: matches no alternative")
        elif kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            num = _TYPES["number"](value)
            bad = {
                "minimum": num and value < arg,
                "maximum": num and value > arg,
                "exclusiveMinimum": num and value <= arg,
                "exclusiveMaximum": num and value >= arg,
            }[kw]
            if bad:
                errs.append(f"{path}: {kw} {arg}")
        elif kw == "minLength":
            if isinstance(value, str) and len(value) < arg:
                errs.append(f"{path}: too short")
        elif kw == "pattern":
            if isinstance(value, str) and not re.search(arg, value):
                errs.append(f"{path}: pattern")
        elif kw in ("minItems", "minProperties"):
            if isinstance(value, list | dict) and len(value) < arg:
                errs.append(f"{path}: too few")
        elif kw == "items":
            if isinstance(value, list):
                for i, v in enumerate(value):
                    errs += validate(arg, v, f"{path}[{i}]")
        elif kw == "additionalProperties":
            if isinstance(value, dict):
                props = schema.get("properties", {})
                for k, v in value.items():
                    if k in props:
                        continue
                    if arg is False:
                        errs.append(f"{path}.{k}: not allowed")
                    elif isinstance(arg, dict):
                        errs += validate(arg, v, f"{path}.{k}")
        else:
            raise AssertionError(f"schema keyword {kw!r} is outside the tested subset")
    if isinstance(value, dict):
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{path}.{k}: required")
        for k, s in schema.get("properties", {}).items():
            if k in value:
                errs += validate(s, value[k], f"{path}.{k}")
    return errs


BASE: dict[str, Any] = {
    "tiers": [
        {"name": "fast", "class": "latency", "ttft_ms": 1000, "tpot_ms": 50},
        {"name": "slow", "class": "best_effort"},
    ],
    "backends": [{"url": "http://127.0.0.1:8001", "tier": "fast", "models": ["m"]}],
    "routing": {
        "default_tier": "fast",
        "allow_anonymous": True,
        "aliases": {"a": {"model": "m", "tier": "slow"}},
    },
    "policy": {"kind": "random", "params": {"seed": 3}},
}


def test_schema_is_draft_2020_12_and_json() -> None:
    s = json_schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json.loads(json.dumps(s)) == s
    assert s["type"] == "object" and s["required"] == ["tiers", "backends"]
    assert s["additionalProperties"] is False
    tier = s["properties"]["tiers"]["items"]
    assert set(tier["properties"]) >= {"name", "class", "ttft_ms", "tpot_ms", "deadline_ms", "weight"}
    assert "[ms]" in tier["properties"]["tpot_ms"]["description"]


@pytest.mark.parametrize("name", ["example.yaml", "production.yaml", "compose.yaml", "compose-sim.yaml"])
def test_shipped_configs_validate_against_the_schema(name: str) -> None:
    raw = yaml.safe_load((ROOT / "config" / name).read_text())
    assert validate(json_schema(), raw) == []


MUTATIONS: list[tuple[str, Any]] = [
    ("server.port", 0),
    ("server.port", "80"),
    ("server.hots", "x"),
    ("tiers.0.tpot_ms", -1),
    ("tiers.0.class", "fastest"),
    ("tiers.0.name", ""),
    ("tiers.0.weight", True),
    ("backends.0.engine", "sglang"),
    ("backends.0.models", "m"),
    ("backends.0.name", "has space"),
    ("routing.header", "bad header"),
    ("routing.keys", [{"name": "k", "key": "s"}]),  # tiers missing
    ("routing.aliases.a.tier", 3),
    ("policy.params", [1]),
    ("models.latency_quantile", 1.0),
    ("admin.token_env", "1BAD"),
    ("retries.max_attempts", 0),
    ("health.path", "health"),
    ("timeouts.idle_s", 0),
    ("autoscale.max_backends", 0),
    ("bogus", 1),
]


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    node: Any = raw
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


def test_base_is_valid_for_both() -> None:
    assert validate(json_schema(), BASE) == []
    parse_config(BASE, env={})


@pytest.mark.parametrize(("path", "value"), MUTATIONS)
def test_schema_and_loader_agree_on_shape_mistakes(path: str, value: Any) -> None:
    raw = _set(BASE, path, value)
    schema_errors = validate(json_schema(), raw)
    assert schema_errors, f"schema accepted {path}={value!r}"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "m.yaml", env={})
    want = re.sub(r"\.(\d+)", r"[\1]", path).split(".keys")[0]
    assert any(p.startswith(want.split("[")[0]) for p, _ in info.value.errors), info.value.errors


def test_schema_defaults_are_the_dataclass_defaults() -> None:
    s = json_schema()
    minimal = {"tiers": BASE["tiers"][:1], "backends": BASE["backends"], "routing": {"allow_anonymous": True}}
    cfg = parse_config(minimal, env={})
    checked = 0
    for section in ("server", "timeouts", "models", "admin", "retries", "health", "autoscale", "policy"):
        props = s["properties"][section]["properties"]
        value = getattr(cfg, section)
        cls: type = type(value)
        for fi in fields_of(cls):
            got = _json_default(getattr(value, fi.attr))  # nested sections, lists, enums as JSON
            assert props[fi.name]["default"] == got, (section, fi.name)
            checked += 1
    assert checked >= 30


def test_every_yaml_field_is_in_the_schema() -> None:
    def walk(cls: type, schema: dict[str, Any], path: str) -> int:
        n = 0
        for fi in fields_of(cls):
            assert fi.name in schema["properties"], f"{path}.{fi.name}"
            n += 1
            tp = fi.tp
            inner = [a for a in getattr(tp, "__args__", ()) if dataclasses.is_dataclass(a)]
            sub = schema["properties"][fi.name]
            for target in [tp, *inner]:
                if dataclasses.is_dataclass(target) and isinstance(target, type):
                    node = sub["anyOf"][0] if "anyOf" in sub else sub
                    node = node.get("items", node)
                    if "properties" not in node:  # a mapping of sections
                        node = node["additionalProperties"]
                    n += walk(target, node, f"{path}.{fi.name}")
        return n

    assert walk(RouterConfig, json_schema(), "") > 60
