"""Whatever the YAML holds, the loader answers with a RouterConfig or a ConfigError whose
lines all name the file — never another exception."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from slorouter.config import ConfigError, RouterConfig, parse_config
from slorouter.config.loader import read_yaml

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "x", "interactive", "batch", "latency", "http://127.0.0.1:1", "vllm", "KEY"]),
)
KEYS = st.sampled_from(
    ["tiers", "backends", "routing", "name", "class", "url", "tier", "tiers", "keys", "key", "key_env",
     "default_tier", "aliases", "model", "port", "server", "policy", "params", "kind", "ttft_ms", "zz"]
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=20,
)
BASE: dict[str, Any] = {
    "tiers": [
        {"name": "interactive", "class": "latency", "ttft_ms": 1000, "tpot_ms": 50},
        {"name": "batch", "class": "best_effort"},
    ],
    "backends": [{"url": "http://127.0.0.1:8001", "tier": "batch"}],
    "routing": {"default_tier": "batch", "keys": [{"name": "k", "key": "s", "tiers": ["batch"]}]},
}


def _outcome(raw: Any) -> None:
    try:
        cfg = parse_config(raw, "f.yaml", env={})
    except ConfigError as e:
        assert e.errors
        assert all(line.startswith("f.yaml: ") for line in e.lines())
    else:
        assert isinstance(cfg, RouterConfig)


@settings(max_examples=150, deadline=None)
@given(VALUES)
def test_any_document_gives_a_config_or_a_config_error(raw: Any) -> None:
    _outcome(raw)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["tiers", "backends", "routing"]), KEYS, VALUES), max_size=3))
def test_any_mutation_of_a_valid_config(edits: list[tuple[str, str, Any]]) -> None:
    raw = copy.deepcopy(BASE)
    for section, key, value in edits:
        node = raw[section]
        target = node[0] if isinstance(node, list) else node
        target[key] = value
    _outcome(raw)


YAMLISH = st.text(alphabet=st.sampled_from(list("ab:-[]{}?&*!|>'\"#%@ \n\t,.0123456789")), max_size=80)


@settings(max_examples=300, deadline=None)
@given(YAMLISH)
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        raw = read_yaml(text, "f.yaml")
    except ConfigError as e:
        assert e.errors and all(line.startswith("f.yaml: ") for line in e.lines())
        return
    _outcome(raw)
