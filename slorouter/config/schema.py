"""The JSON Schema (draft 2020-12) of the config file, derived from the same dataclass
declarations the validator uses (:mod:`slorouter.config.model`)."""

from __future__ import annotations

from typing import Any

from slorouter.config.fields import schema_of
from slorouter.config.model import RouterConfig

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The schema for editors (YAML language servers accept JSON Schema)."""
    body = schema_of(RouterConfig)
    return {
        "$schema": DIALECT,
        "title": "slorouter configuration",
        **body,
    }
