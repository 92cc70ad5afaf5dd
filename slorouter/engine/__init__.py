"""The engine model: one step-clock engine (batching, chunked prefill, KV), pure — no I/O,
no clock. Shared by the simulated engine (:mod:`slorouter.simengine`) and the fleet
simulator (:mod:`slorouter.fleetsim`), so both run the same engine.

* :mod:`.model` — the step-clock engine.
* :mod:`.profiles` — built-in engine profiles (``h100-70b``, ``h100-8b``, ``cpu-tiny``) and
  loading a profile by name or JSON file.
"""
