"""The simulated engine: many engine models (:mod:`slorouter.engine`) served over HTTP —
vLLM's OpenAI API or TGI's — from one process, in real time. ``serve_engines`` for tests,
``slorouter sim`` (:mod:`.cli`) for users. It never imports the router's parts (an
import-linter contract): it stands where a real engine stands.

* :mod:`.server` — the aiohttp app, one port per engine.
* :mod:`.runtime` — the real-time step loop around one engine model.
* :mod:`.requests` — request rules (validation, limits), :mod:`.text` — the tokenization
  rule and deterministic text, :mod:`.wire` — response bytes (SSE, JSON),
  :mod:`.metrics_text` — the engine's ``/metrics``.
"""
