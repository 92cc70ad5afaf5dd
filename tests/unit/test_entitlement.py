"""Tier resolution: API key entitlement, tier header, model aliases, admin token."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from slorouter.config import RouterConfig, parse_config
from slorouter.config.entitlement import Refusal, Resolution, bearer, check_admin, resolve

SECRETS = {"KEY_BATCH": "sk-batch-0123456789", "KEY_GOLD": "sk-gold-abcdef", "KEY_MID": "sk-mid-xyz"}


def config(allow_anonymous: bool = False, anonymous_tiers: list[str] | None = None) -> RouterConfig:
    raw: dict[str, Any] = {
        "tiers": [
            {"name": "interactive", "class": "latency", "ttft_ms": 1000, "tpot_ms": 50},
            {"name": "standard", "class": "latency", "ttft_ms": 5000, "tpot_ms": 150},
            {"name": "batch", "class": "best_effort"},
        ],
        "backends": [{"url": "http://127.0.0.1:8001"}],
        "routing": {
            "default_tier": "standard",
            "allow_anonymous": allow_anonymous,
            "keys": [
                {"name": "batch-jobs", "key_env": "KEY_BATCH", "tiers": ["batch"]},
                {"name": "gold", "key_env": "KEY_GOLD", "tiers": ["interactive", "standard", "batch"]},
                {
                    "name": "mid",
                    "key_env": "KEY_MID",
                    "tiers": ["standard", "batch"],
                    "default_tier": "batch",
                },
            ],
            "aliases": {"fast-llama": {"model": "llama", "tier": "interactive"}},
        },
    }
    if anonymous_tiers is not None:
        raw["routing"]["anonymous_tiers"] = anonymous_tiers
    return parse_config(raw, "test.yaml", env=SECRETS)


def refused(r: Resolution | Refusal, status: int, code: str) -> Refusal:
    assert isinstance(r, Refusal), r
    assert (r.status, r.code) == (status, code), r
    return r


def granted(r: Resolution | Refusal) -> Resolution:
    assert isinstance(r, Resolution), r
    return r


def test_batch_key_asking_interactive_by_header_is_403() -> None:
    r = refused(resolve(config(), SECRETS["KEY_BATCH"], "interactive", "llama"), 403, "tier_not_allowed")
    assert "interactive" in r.message and r.type == "permission_error"
    assert SECRETS["KEY_BATCH"] not in r.message


def test_batch_key_asking_interactive_by_alias_is_403() -> None:
    cfg = config()
    refused(resolve(cfg, SECRETS["KEY_BATCH"], None, "llama@interactive"), 403, "tier_not_allowed")
    refused(resolve(cfg, SECRETS["KEY_BATCH"], None, "fast-llama"), 403, "tier_not_allowed")


def test_key_gets_its_default_tier_and_may_choose_among_its_tiers() -> None:
    cfg = config()
    r = granted(resolve(cfg, SECRETS["KEY_BATCH"], None, "llama"))
    assert (r.tier.name, r.model, r.key_id) == ("batch", "llama", "batch-jobs")
    r = granted(resolve(cfg, SECRETS["KEY_MID"], None, "llama"))
    assert r.tier.name == "batch"  # the key's own default_tier
    r = granted(resolve(cfg, SECRETS["KEY_GOLD"], None, "llama"))
    assert r.tier.name == "interactive"  # default: the key's first tier
    r = granted(resolve(cfg, SECRETS["KEY_GOLD"], "batch", "llama"))
    assert (r.tier.name, r.key_id) == ("batch", "gold")
    assert r.tier is cfg.tier("batch")


def test_alias_strips_the_tier_and_maps_the_model() -> None:
    cfg = config()
    r = granted(resolve(cfg, SECRETS["KEY_GOLD"], None, "llama@standard"))
    assert (r.tier.name, r.model) == ("standard", "llama")
    r = granted(resolve(cfg, SECRETS["KEY_GOLD"], None, "fast-llama"))
    assert (r.tier.name, r.model) == ("interactive", "llama")
    r = granted(resolve(cfg, SECRETS["KEY_GOLD"], "interactive", "org/model@interactive"))
    assert (r.tier.name, r.model) == ("interactive", "org/model")


def test_unknown_key_is_401_even_when_anonymous_is_allowed() -> None:
    for cfg in (config(), config(allow_anonymous=True)):
        r = refused(resolve(cfg, "sk-wrong", None, "llama"), 401, "invalid_api_key")
        assert r.type == "authentication_error"
    refused(resolve(config(), SECRETS["KEY_GOLD"] + "x", None, "llama"), 401, "invalid_api_key")
    refused(resolve(config(), SECRETS["KEY_GOLD"][:-1], None, "llama"), 401, "invalid_api_key")


def test_no_key_is_401_unless_anonymous_allowed() -> None:
    refused(resolve(config(), None, None, "llama"), 401, "missing_api_key")
    refused(resolve(config(), "", None, "llama"), 401, "missing_api_key")
    r = granted(resolve(config(allow_anonymous=True), None, None, "llama"))
    assert (r.tier.name, r.key_id) == ("standard", None)


def test_anonymous_with_keys_declared_gets_only_the_default_tier() -> None:
    cfg = config(allow_anonymous=True)
    refused(resolve(cfg, None, "interactive", "llama"), 403, "tier_not_allowed")
    granted(resolve(cfg, None, "standard", "llama"))
    cfg = config(allow_anonymous=True, anonymous_tiers=["batch"])
    assert granted(resolve(cfg, None, "batch", "m")).tier.name == "batch"
    assert granted(resolve(cfg, None, None, "m")).tier.name == "standard"  # default stays allowed
    refused(resolve(cfg, None, "interactive", "m"), 403, "tier_not_allowed")


def test_anonymous_without_keys_may_pick_any_tier() -> None:
    raw: dict[str, Any] = {
        "tiers": [
            {"name": "a", "class": "latency", "ttft_ms": 1, "tpot_ms": 1},
            {"name": "b", "class": "best_effort"},
        ],
        "backends": [{"url": "http://127.0.0.1:8001"}],
        "routing": {"default_tier": "b", "allow_anonymous": True},
    }
    cfg = parse_config(raw, env={})
    assert granted(resolve(cfg, None, "a", "m")).tier.name == "a"
    assert granted(resolve(cfg, None, None, "m@a")).tier.name == "a"
    assert granted(resolve(cfg, None, None, "m")).tier.name == "b"


def test_unknown_tier_is_400() -> None:
    cfg = config()
    r = refused(resolve(cfg, SECRETS["KEY_GOLD"], "platinum", "llama"), 400, "unknown_tier")
    assert "platinum" in r.message and r.type == "invalid_request_error"
    refused(resolve(cfg, SECRETS["KEY_GOLD"], None, "llama@platinum"), 400, "unknown_tier")


def test_header_and_alias_disagreeing_is_400() -> None:
    r = refused(resolve(config(), SECRETS["KEY_GOLD"], "standard", "llama@interactive"), 400, "tier_conflict")
    assert "standard" in r.message and "interactive" in r.message


def test_authentication_comes_before_tier_checks() -> None:
    refused(resolve(config(), "sk-wrong", "platinum", "llama"), 401, "invalid_api_key")
    refused(resolve(config(), None, "platinum", "llama"), 401, "missing_api_key")


def test_keys_are_compared_in_constant_time_over_all_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is compared with hmac.compare_digest, over equal-length
    digests, whichever key matches (first, last, none): no early exit."""
    cfg = config()
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module entitlement calls through
    for key in (SECRETS["KEY_BATCH"], SECRETS["KEY_MID"], "sk-nope", "x" * 500):
        calls.clear()
        resolve(cfg, key, None, "llama")
        assert len(calls) == len(cfg.routing.keys), key
        assert all(a == b == 32 for a, b in calls)  # SHA-256 digests: lengths leak nothing


def test_bearer_parsing() -> None:
    assert bearer("Bearer sk-1") == "sk-1"
    assert bearer("bearer   sk-1 ") == "sk-1"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None
    assert bearer("") is None


def test_admin_token() -> None:
    cfg = config()
    env = {"SLOROUTER_ADMIN_TOKEN": "adm-123"}
    assert check_admin(cfg, "adm-123", env) is None
    r = check_admin(cfg, None, env)
    assert r is not None and (r.status, r.code) == (401, "invalid_admin_token")
    r = check_admin(cfg, "adm-12", env)
    assert r is not None and r.status == 401
    r = check_admin(cfg, "adm-123", {})
    assert r is not None and (r.status, r.code) == (403, "admin_disabled")
    assert "SLOROUTER_ADMIN_TOKEN" in r.message


def test_any_key_is_ignored_when_no_keys_are_configured() -> None:
    """OpenAI SDKs always send a key (often "EMPTY"): with no keys declared the request is
    simply anonymous."""
    raw: dict[str, Any] = {
        "tiers": [{"name": "a", "class": "best_effort"}],
        "backends": [{"url": "http://127.0.0.1:8001"}],
        "routing": {"allow_anonymous": True},
    }
    cfg = parse_config(raw, env={})
    r = granted(resolve(cfg, "EMPTY", None, "m"))
    assert (r.tier.name, r.key_id) == ("a", None)
