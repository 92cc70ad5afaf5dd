"""Which tier a request gets: pure functions of the config and what the request says.

A request reaches a tier in one of three ways (config/example.yaml, ``routing``):

* its API key's ``default_tier`` (anonymous requests: ``routing.default_tier``), unless
* the tier header (``routing.header``, default ``x-slo-tier``) names one, or
* the model names one: an explicit alias (``routing.aliases``) or ``MODEL@TIER``
  (the suffix is stripped before the request goes to the backend).

A header or alias may choose only among the tiers the caller is entitled to.

:func:`resolve` answers :class:`Resolution` or :class:`Refusal`:

======  ====================  ==============================================================
status  code                  when
======  ====================  ==============================================================
401     ``missing_api_key``   no key and ``routing.allow_anonymous`` is false
401     ``invalid_api_key``   a key that matches no configured key (even if anonymous is ok);
                              with no keys configured at all, any key (OpenAI SDKs always send
                              one, often ``EMPTY``) is ignored and the request is anonymous
400     ``unknown_tier``      the header or the alias suffix names no tier
400     ``tier_conflict``     the header and the model alias name different tiers
403     ``tier_not_allowed``  the key (or anonymous caller) is not entitled to that tier
======  ====================  ==============================================================

Keys are compared in constant time: the SHA-256 digest of the presented key is compared
with :func:`hmac.compare_digest` against the digest of **every** configured key, with no
early exit, so timing reveals neither which key matched nor how much of it. The key
itself never leaves this module: results carry the key's ``name`` (``key_id``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from slorouter.config.model import KeyConfig, RouterConfig
from slorouter.values import Tier

_TYPES: Mapping[int, str] = {401: "authentication_error", 403: "permission_error"}


@dataclass(frozen=True, slots=True)
class Resolution:
    tier: Tier
    model: str  # the model to send upstream (alias resolved, @TIER suffix stripped)
    key_id: str | None  # the key's name; None for anonymous requests


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    code: str

    @property
    def type(self) -> str:
        """OpenAI-style error type for ``{"error": {"message", "type", "code"}}``."""
        return _TYPES.get(self.status, "invalid_request_error")


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "backslashreplace")).digest()


def find_key(cfg: RouterConfig, api_key: str) -> KeyConfig | None:
    """The configured key equal to ``api_key`` (constant time over all keys)."""
    given = _digest(api_key)
    match: KeyConfig | None = None
    for k in cfg.routing.keys:
        hit = hmac.compare_digest(given, k.digest)
        match = k if hit else match
    return match


def _requested(cfg: RouterConfig, model: str) -> tuple[str, str | None, str]:
    """(upstream model, requested tier or None, how it was asked for)."""
    alias = cfg.routing.aliases.get(model)
    if alias is not None:
        return alias.model, alias.tier, f"model alias {model!r}"
    base, sep, suffix = model.rpartition("@")
    if sep and base and suffix:
        return base, suffix, f"model {model!r}"
    return model, None, ""


def resolve(
    cfg: RouterConfig, api_key: str | None, header_tier: str | None, model: str | None
) -> Resolution | Refusal:
    """Authenticate, then pick the tier; see the module doc for every refusal."""
    routing = cfg.routing
    key: KeyConfig | None = None
    if api_key and routing.keys:
        key = find_key(cfg, api_key)
        if key is None:
            return Refusal(401, "invalid API key", "invalid_api_key")
    elif not routing.allow_anonymous:
        return Refusal(
            401, "an API key is required: send the header `Authorization: Bearer <key>`", "missing_api_key"
        )

    upstream, alias_tier, alias_how = _requested(cfg, model or "")
    header = header_tier.strip() if header_tier else ""
    known = cfg.tier_by_name
    for asked, how in ((header, f"header {routing.header}"), (alias_tier, alias_how)):
        if asked and asked not in known:
            return Refusal(
                400, f"unknown tier {asked!r} in {how} (tiers: {', '.join(known)})", "unknown_tier"
            )
    if header and alias_tier and header != alias_tier:
        return Refusal(
            400,
            f"header {routing.header} asks for tier {header!r} but {alias_how} asks for {alias_tier!r}",
            "tier_conflict",
        )
    if key is not None:
        allowed, default, who = key.tiers, key.default_tier, "this API key is"
    else:
        allowed, default, who = (
            tuple(routing.anonymous_allowed),
            routing.default_tier,
            "anonymous requests are",
        )
    chosen = header or alias_tier or default
    if chosen not in allowed:
        return Refusal(
            403,
            f"{who} not entitled to tier {chosen!r} (allowed: {', '.join(sorted(allowed))})",
            "tier_not_allowed",
        )
    return Resolution(known[chosen], upstream, key.name if key is not None else None)


def check_admin(cfg: RouterConfig, token: str | None, env: Mapping[str, str] | None = None) -> Refusal | None:
    """None when ``token`` (the bare bearer token) equals the admin token; else a refusal:
    403 ``admin_disabled`` when the token variable is unset or empty, 401 otherwise."""
    var = cfg.admin.token_env
    expected = (os.environ if env is None else env).get(var, "")
    if not expected:
        return Refusal(
            403, f"admin endpoints are disabled: set the environment variable {var}", "admin_disabled"
        )
    if not token or not hmac.compare_digest(_digest(token), _digest(expected)):
        return Refusal(
            401, "admin endpoints need `Authorization: Bearer <admin token>`", "invalid_admin_token"
        )
    return None
