"""The engine model: one step-clock engine (batching, chunked prefill, KV), pure — no I/O,
no clock. Shared by the simulated engine (:mod:`slorouter.simengine`) and the fleet
simulator (:mod:`slorouter.fleetsim`), so both run the same engine.

* :mod:`.model` — the step-clock engine; :mod:`.results` — what a step reports (token
  segments, finishes) and token arrival times.
* :mod:`.profiles` — built-in engine profiles (``h100-70b``, ``h100-8b``, ``cpu-tiny``) and
  loading a profile by name or JSON file.

Driving it::

    eng = EngineModel(profile, seed=0, keep_history=True)
    eng.submit("a", prompt_tokens=100, output_tokens=20, now=0.0)
    while (end := eng.plan(now)) is not None:   # end of the next step
        now = end                               # (a real-time driver sleeps until then)
        res = eng.step()                        # res.first_token, res.finished, ...
        # tokens of this step went to: every rid in eng.decoding_rids() (read right
        # after step()) plus every rid in res.finished.

``plan`` is idempotent until ``step`` is called; ``submit``/``abort`` are allowed at any
time (a request submitted while a step is planned joins the next one; an abort frees its
KV at once and the request does not appear in that step's results).
"""
