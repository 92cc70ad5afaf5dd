"""Per-engine request preparation: what the router changes in a request body before
it goes upstream, and how the response stream is read.

The router changes a body only when it must:
* a model alias (``llama@fast``) is replaced by the model name;
* for a streaming request to a vLLM backend whose client did not ask for
  ``stream_options.include_usage``, the router asks for it (so it learns exact token
  counts) and the observer strips that extra usage chunk again. OpenAI's own API adds
  ``"usage": null`` to every chunk when asked, so for ``engine: openai`` (and TGI) the
  router does not ask and counts chunks instead.
Otherwise the client's bytes are forwarded as they came.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from slorouter.proxy.sse import Flavor
from slorouter.values import Engine


@dataclass(frozen=True, slots=True)
class Prepared:
    body: bytes
    stream: bool
    strip_usage: bool
    flavor: Flavor


def prepare_openai(raw: bytes, parsed: dict[str, Any], engine: Engine, model: str | None) -> Prepared:
    """Body for an OpenAI-style route (chat/completions, completions)."""
    stream = parsed.get("stream") is True
    changed = False
    body = parsed
    if model is not None and parsed.get("model") != model:
        body = {**body, "model": model}
        changed = True
    strip = False
    if stream and engine is Engine.VLLM:
        so = parsed.get("stream_options")
        if not (isinstance(so, dict) and so.get("include_usage") is True):
            opts = dict(so) if isinstance(so, dict) else {}
            opts["include_usage"] = True
            body = {**body, "stream_options": opts}
            changed = True
            strip = True
    data = orjson.dumps(body) if changed else raw
    return Prepared(data, stream, strip, Flavor.OPENAI)


def prepare_tgi(raw: bytes, parsed: dict[str, Any], stream: bool) -> Prepared:
    """Body for TGI's native /generate and /generate_stream (forwarded unchanged)."""
    return Prepared(raw, stream, False, Flavor.TGI)
