"""Checks across sections (names, references, per-class numbers, URLs, secrets).

They read the *raw* parsed YAML leniently — an entry whose shape is wrong was already
reported by the shape check and is skipped here — so that one typo does not hide the
other mistakes of the file and no error is reported twice.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slorouter.config.fields import Errors, join, suggest
from slorouter.values import SloClass

_NUMBERS = ("ttft_ms", "tpot_ms", "deadline_ms")
_NEEDS: Mapping[str, tuple[str, ...]] = {
    SloClass.LATENCY.value: ("ttft_ms", "tpot_ms"),
    SloClass.DEADLINE.value: ("deadline_ms",),
    SloClass.WORKFLOW.value: ("deadline_ms",),
    SloClass.BEST_EFFORT.value: (),
}


def _items(raw: Any, key: str) -> list[tuple[int, Mapping[str, Any]]]:
    seq = raw.get(key) if isinstance(raw, Mapping) else None
    if not isinstance(seq, list):
        return []
    return [(i, x) for i, x in enumerate(seq) if isinstance(x, Mapping)]


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = raw.get(key)
    return v if isinstance(v, Mapping) else {}


def _str(m: Mapping[str, Any], key: str) -> str | None:
    v = m.get(key)
    return v if isinstance(v, str) else None


def lenient_tier_names(raw: Mapping[str, Any]) -> list[str]:
    """Distinct tier names in config order (entries without a string name skipped)."""
    names = [n for _, t in _items(raw, "tiers") if (n := _str(t, "name")) is not None]
    return list(dict.fromkeys(names))


def _ref(tier: str | None, known: list[str], path: str, errs: Errors) -> None:
    if tier is not None and tier not in known:
        listed = ", ".join(known) if known else "none declared"
        errs.append((path, f"unknown tier {tier!r}{suggest(tier, known)} (tiers: {listed})"))


def _unique(seen: dict[str, int], name: str, i: int, what: str, section: str, errs: Errors) -> None:
    """Report ``section[i]``'s name if an earlier entry has it; remember the first entry."""
    if name in seen:
        also = f"{section}[{seen[name]}]"
        errs.append((f"{section}[{i}].name", f"duplicate {what} name {name!r} (also {also})"))
    seen.setdefault(name, i)


def _check_tiers(raw: Mapping[str, Any], errs: Errors) -> None:
    seen: dict[str, int] = {}
    for i, t in _items(raw, "tiers"):
        path = f"tiers[{i}]"
        name = _str(t, "name")
        if name is not None:
            _unique(seen, name, i, "tier", "tiers", errs)
        cls = _str(t, "class")
        if cls is None or cls not in _NEEDS:
            continue
        for need in _NEEDS[cls]:
            if t.get(need) is None:
                errs.append((join(path, need), f"required for class {cls}"))
        if cls == SloClass.BEST_EFFORT.value:
            for n in _NUMBERS:
                if t.get(n) is not None:
                    errs.append((join(path, n), "a best_effort tier has no SLO numbers; remove it"))
            if t.get("when_late") is not None:
                errs.append((join(path, "when_late"), "a best_effort tier is never late; remove it"))


def _check_url(url: str, path: str, errs: Errors) -> str | None:
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        errs.append((path, f"not a valid URL ({e}): {url!r}"))
        return None
    if u.scheme not in ("http", "https") or not u.hostname:
        errs.append(
            (path, f"must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000, got {url!r}")
        )
        return None
    if u.query or u.fragment:
        errs.append((path, "must not have a query or fragment"))
        return None
    default_port = 443 if u.scheme == "https" else 80
    return f"{u.scheme}://{u.hostname.lower()}:{port or default_port}{u.path.rstrip('/')}"


def check_url(url: str, path: str, errs: Errors) -> str | None:
    """Append an error for a URL that is not ``http(s)://host[:port][/path]``; return it
    normalized (scheme, lower-case host, explicit port, no trailing slash) when valid."""
    return _check_url(url, path, errs)


def _check_backends(
    raw: Mapping[str, Any], tiers: list[str], env: Mapping[str, str], errs: Errors
) -> dict[int, str]:
    """Append the backends' errors; return their API keys (``api_key_env``) by index."""
    names: dict[str, int] = {}
    urls: dict[str, int] = {}
    keys: dict[int, str] = {}
    for i, b in _items(raw, "backends"):
        path = f"backends[{i}]"
        name = _str(b, "name") or f"b{i}"
        _unique(names, name, i, "backend", "backends", errs)
        url = _str(b, "url")
        norm = _check_url(url, join(path, "url"), errs) if url is not None else None
        if norm is not None:
            if norm in urls:
                errs.append((join(path, "url"), f"same server as backends[{urls[norm]}]"))
            urls.setdefault(norm, i)
        _ref(_str(b, "tier"), tiers, join(path, "tier"), errs)
        var = _str(b, "api_key_env")
        if var is not None:
            value = _env_value(var, join(path, "api_key_env"), env, errs)
            if value is not None:
                keys[i] = value
    return keys


def _env_value(var: str, path: str, env: Mapping[str, str], errs: Errors) -> str | None:
    value = env.get(var, "")
    if not value:
        errs.append((path, f"environment variable {var} is not set (or empty)"))
        return None
    return value


def _check_routing(
    raw: Mapping[str, Any], tiers: list[str], env: Mapping[str, str], errs: Errors
) -> dict[int, str]:
    routing = _section(raw, "routing")
    default = _str(routing, "default_tier")
    _ref(default, tiers, "routing.default_tier", errs)
    if default is None and routing.get("default_tier") is None and len(tiers) > 1:
        errs.append(
            ("routing.default_tier", f"required when several tiers exist (one of: {', '.join(tiers)})")
        )
    anon = routing.get("anonymous_tiers")
    if isinstance(anon, list):
        for j, t in enumerate(anon):
            _ref(t if isinstance(t, str) else None, tiers, f"routing.anonymous_tiers[{j}]", errs)
    aliases = routing.get("aliases")
    if isinstance(aliases, Mapping):
        for alias, spec in aliases.items():
            if isinstance(spec, Mapping):
                _ref(_str(spec, "tier"), tiers, f"routing.aliases.{alias}.tier", errs)
    keys = routing.get("keys")
    if routing.get("allow_anonymous") in (None, False) and (keys is None or keys == []):
        errs.append(
            ("routing.allow_anonymous", "no request could be served: set it to true, or declare routing.keys")
        )
    secrets: dict[int, str] = {}
    names: dict[str, int] = {}
    for i, k in _items(routing, "keys"):
        path = f"routing.keys[{i}]"
        name = _str(k, "name")
        if name is not None:
            _unique(names, name, i, "key", "routing.keys", errs)
        allowed = k.get("tiers")
        allowed_names = [t for t in allowed if isinstance(t, str)] if isinstance(allowed, list) else []
        for j, t in enumerate(allowed if isinstance(allowed, list) else []):
            _ref(t if isinstance(t, str) else None, tiers, f"{path}.tiers[{j}]", errs)
        kd = _str(k, "default_tier")
        _ref(kd, tiers, join(path, "default_tier"), errs)
        if kd is not None and kd in tiers and isinstance(allowed, list) and kd not in allowed_names:
            errs.append((join(path, "default_tier"), f"{kd!r} is not in this key's tiers"))
        secret = _secret(k, path, env, errs)
        if secret is not None:
            for j, other in secrets.items():
                if hmac.compare_digest(other.encode(), secret.encode()):
                    errs.append((path, f"same secret as routing.keys[{j}]"))
            secrets[i] = secret
    return secrets


def _secret(k: Mapping[str, Any], path: str, env: Mapping[str, str], errs: Errors) -> str | None:
    has_key, has_env = k.get("key") is not None, k.get("key_env") is not None
    if has_key and has_env:
        errs.append((path, "give either key or key_env, not both"))
        return None
    if not has_key and not has_env:
        errs.append((path, "one of key_env (an environment variable name) or key is required"))
        return None
    if has_key:
        return _str(k, "key") or None
    var = _str(k, "key_env")
    return None if var is None else _env_value(var, join(path, "key_env"), env, errs)


def _check_misc(raw: Mapping[str, Any], base_dir: Path | None, errs: Errors) -> None:
    profile = _str(_section(raw, "models"), "profile")
    if profile:
        p = Path(profile) if base_dir is None else base_dir / profile
        if not p.is_file():
            errs.append(("models.profile", f"file not found: {p}"))
    sync = _section(_section(raw, "state"), "sync")
    kind, url = sync.get("kind", "none"), sync.get("url")
    if kind == "redis" and not isinstance(url, str):
        errs.append(("state.sync.url", "required with kind: redis (e.g. redis://127.0.0.1:6379/0)"))
    elif (
        kind == "redis" and isinstance(url, str) and not url.startswith(("redis://", "rediss://", "unix://"))
    ):
        errs.append(("state.sync.url", f"must start with redis://, rediss:// or unix://, got {url!r}"))
    elif kind == "none" and url is not None:
        errs.append(("state.sync.url", "given, but state.sync.kind is none: set kind: redis to use it"))
    tick, ttl = sync.get("tick_ms", 100.0), sync.get("ttl_ms", 500.0)
    if isinstance(tick, int | float) and isinstance(ttl, int | float) and ttl <= tick:
        errs.append(("state.sync.ttl_ms", f"must be > tick_ms ({tick}): a live replica's row would expire"))
    retries = _section(raw, "retries")
    b, bmax = retries.get("backoff_s"), retries.get("backoff_max_s")
    if isinstance(b, int | float) and isinstance(bmax, int | float) and bmax < b:
        errs.append(("retries.backoff_max_s", f"must be >= backoff_s ({b})"))


def _num(m: Mapping[str, Any], key: str) -> float | None:
    v = m.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _check_autoscale(raw: Mapping[str, Any], tiers: list[str], env: Mapping[str, str], errs: Errors) -> None:
    auto = _section(raw, "autoscale")
    lo, hi = auto.get("min_backends"), auto.get("max_backends")
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        errs.append(("autoscale.max_backends", f"must be >= min_backends ({lo})"))
    out_u, in_u = _num(auto, "target_utilization"), _num(auto, "scale_in_utilization")
    out_u = 0.85 if out_u is None else out_u
    if in_u is not None and in_u >= out_u:
        msg = f"must be below target_utilization ({out_u:g}): the hysteresis band"
        errs.append(("autoscale.scale_in_utilization", msg))
    per_tier = auto.get("tiers")
    floors = 0
    if isinstance(per_tier, Mapping):
        for name, lim in per_tier.items():
            path = f"autoscale.tiers.{name}"
            _ref(name if isinstance(name, str) else None, tiers, path, errs)
            if not isinstance(lim, Mapping):
                continue
            tlo, thi = lim.get("min_servers"), lim.get("max_servers")
            if isinstance(tlo, int) and isinstance(thi, int) and tlo > thi:
                errs.append((join(path, "max_servers"), f"must be >= min_servers ({tlo})"))
            floors += tlo if isinstance(tlo, int) and not isinstance(tlo, bool) else 0
    if isinstance(hi, int) and not isinstance(hi, bool) and floors > hi:
        errs.append(("autoscale.max_backends", f"must be >= the sum of the tiers' min_servers ({floors})"))
    hook = _section(auto, "webhook")
    urls = hook.get("urls")
    for i, u in enumerate(urls if isinstance(urls, list) else []):
        if isinstance(u, str):
            _check_url(u, f"autoscale.webhook.urls[{i}]", errs)
    b, bmax = _num(hook, "backoff_s"), _num(hook, "backoff_max_s")
    if b is not None and bmax is not None and bmax < b:
        errs.append(("autoscale.webhook.backoff_max_s", f"must be >= backoff_s ({b:g})"))
    if auto.get("enabled") is not True or auto.get("mode") != "webhook":
        return
    if not urls:
        msg = "mode webhook needs at least one URL (or set autoscale.mode: advisory)"
        errs.append(("autoscale.webhook.urls", msg))
    given = hook.get("secret_env")
    var = given if isinstance(given, str) else "SLOROUTER_WEBHOOK_SECRET"
    if (given is None or isinstance(given, str)) and not env.get(var, ""):
        msg = f"environment variable {var} is not set (or empty): webhooks are signed with it"
        errs.append(("autoscale.webhook.secret_env", msg))


@dataclass(frozen=True, slots=True)
class Secrets:
    """What the environment gave: ``routing.keys[i]`` secrets and ``backends[i]`` API keys."""

    keys: Mapping[int, str]
    backends: Mapping[int, str]


def check_references(
    raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path | None, errs: Errors
) -> Secrets:
    """Append cross-section errors; return the resolved secrets by index."""
    tiers = lenient_tier_names(raw)
    _check_tiers(raw, errs)
    backend_keys = _check_backends(raw, tiers, env, errs)
    secrets = _check_routing(raw, tiers, env, errs)
    _check_misc(raw, base_dir, errs)
    _check_autoscale(raw, tiers, env, errs)
    return Secrets(secrets, backend_keys)
