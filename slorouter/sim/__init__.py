"""Simulated engines.

* :mod:`slorouter.sim.engine` — the pure step-clock engine model (no I/O, no clock).
* :mod:`slorouter.sim.profiles` — built-in engine profiles (``h100-70b``, ``h100-8b``,
  ``cpu-tiny``) and loading a profile by name or JSON file.
* :mod:`slorouter.sim.server` — serves many simulated engines over HTTP (vLLM's OpenAI
  API or TGI's API) from one process: ``serve_engines`` for tests, ``slorouter sim``
  (:mod:`slorouter.sim.cli`) for users. Built from :mod:`~slorouter.sim.runtime` (the
  real-time step loop), :mod:`~slorouter.sim.requests` (request rules),
  :mod:`~slorouter.sim.text` (tokenization rule, deterministic text),
  :mod:`~slorouter.sim.wire` (response bytes) and :mod:`~slorouter.sim.metrics_text`.
* :mod:`slorouter.sim.fleet` — the offline fleet simulator (no HTTP).
"""
