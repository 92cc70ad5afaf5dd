"""YAML file -> :class:`RouterConfig`, or a :class:`ConfigError` listing every mistake.

Each error is reported as ``FILE: PATH: MESSAGE`` (``config/x.yaml: tiers[2].tpot_ms:
must be > 0``). Checks, in order, all collected before raising:

1. reading and YAML syntax (line and column), an empty file, duplicate keys;
2. the shape of every section, derived from the dataclasses in
   :mod:`slorouter.config.model` (unknown keys with a suggestion, types, bounds, enums,
   required fields);
3. what one section says about another (:mod:`slorouter.config.checks`): duplicate
   names, references to unknown tiers, per-class tier numbers, backend URLs, API key
   secrets (``key_env``, ``api_key_env`` must name a set environment variable), the profile file.

Then the loader fills derived defaults (backend names ``b<i>``, backend tiers, a key's
default tier, the resolved secrets and their digests, the anonymous entitlement).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from slorouter.config.checks import Secrets, check_references, lenient_tier_names
from slorouter.config.fields import _BAD, Errors, convert_section, position
from slorouter.config.model import RouterConfig


class ConfigError(ValueError):
    """Every problem of one config file; ``errors`` are ``(path, message)`` pairs."""

    def __init__(self, source: str, errors: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [format_error(self.source, p, m) for p, m in self.errors]


def format_error(source: str, path: str, message: str) -> str:
    return f"{source}: {path}: {message}" if path else f"{source}: {message}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of silently keeping the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: Errors = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            line = first.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # unhashable key: the shape check reports it
            continue
        if line != key_node.start_mark.line + 1:
            loader.duplicates.append(
                (
                    f"line {key_node.start_mark.line + 1}",
                    f"duplicate key {key!r} (first at line {line}); YAML would silently keep the last",
                )
            )
    return loader.construct_mapping(node, deep=True)  # flattens merges, refuses unhashable keys


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text: str, source: str) -> Any:
    """Parse ``text``; raise :class:`ConfigError` on syntax errors, duplicate keys, emptiness."""
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark, ctx = e.problem_mark or e.context_mark, e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        what = e.problem or "invalid YAML"
        if e.context:
            at = f" at line {ctx.line + 1}, column {ctx.column + 1}" if ctx and ctx is not mark else ""
            what += f" ({e.context}{at})"
        raise ConfigError(source, [(where, f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, [("", f"YAML error: {e}")]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(source, loader.duplicates)
    if data is None:
        raise ConfigError(source, [("", "the file is empty (expected at least `tiers:` and `backends:`)")])
    return data


def read_file(path: str | os.PathLike[str]) -> Any:
    """Read and parse a YAML file (see :func:`read_yaml`)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(source, [("", f"cannot read: {e}")]) from None
    return read_yaml(text, source)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> RouterConfig:
    """Load and validate a config file. Relative ``models.profile`` paths are resolved
    against the file's directory; ``key_env`` / ``api_key_env`` secrets are read from ``env`` (default:
    the process environment)."""
    raw = read_file(path)
    return parse_config(raw, str(path), env=env, base_dir=Path(path).parent)


def parse_config(
    raw: Any,
    source: str = "<memory>",
    *,
    env: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> RouterConfig:
    """Validate an already-parsed mapping; raise :class:`ConfigError` with every error."""
    env = os.environ if env is None else env
    errs: Errors = []
    if not isinstance(raw, Mapping):
        kind = "list" if isinstance(raw, list) else type(raw).__name__
        raise ConfigError(source, [("", f"the top level must be a mapping of sections, got {kind}")])
    cfg = convert_section(RouterConfig, raw, "", errs)
    secrets = check_references(raw, env, Path(base_dir) if base_dir is not None else None, errs)
    if errs or cfg is _BAD:
        raise ConfigError(source, sorted(errs, key=lambda e: position(raw, e[0])))
    assert isinstance(cfg, RouterConfig)
    return _finish(cfg, source, secrets, Path(base_dir) if base_dir is not None else None, raw)


def _finish(
    cfg: RouterConfig, source: str, secrets: Secrets, base_dir: Path | None, raw: Mapping[str, Any]
) -> RouterConfig:
    names = lenient_tier_names(raw)
    routing = cfg.routing
    default_tier = routing.default_tier or names[0]
    backends = tuple(
        replace(
            b,
            name=b.name or f"b{i}",
            tier=b.tier or default_tier,
            url=b.url.rstrip("/"),
            api_key=secrets.backends.get(i),
        )
        for i, b in enumerate(cfg.backends)
    )
    keys = tuple(
        replace(
            k,
            key=secrets.keys[i],
            default_tier=k.default_tier or k.tiers[0],
            digest=hashlib.sha256(secrets.keys[i].encode()).digest(),
        )
        for i, k in enumerate(routing.keys)
    )
    if routing.anonymous_tiers is not None:
        anonymous = frozenset(routing.anonymous_tiers) | {default_tier}
    elif not keys:
        anonymous = frozenset(names)
    else:
        anonymous = frozenset({default_tier})
    models = cfg.models
    if models.profile is not None and base_dir is not None:
        models = replace(models, profile=str(base_dir / models.profile))
    return replace(
        cfg,
        source=source,
        backends=backends,
        models=models,
        routing=replace(routing, default_tier=default_tier, keys=keys, anonymous_allowed=anonymous),
    )
