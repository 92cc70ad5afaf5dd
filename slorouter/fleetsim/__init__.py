"""The offline fleet simulator (``slorouter simulate``): the router's own policies,
admission core, latency and length models and scaling rules, driven by an event heap on a
manual clock over engine models (:mod:`slorouter.engine`) — no HTTP.

* :mod:`.fleet` — the event loop (:class:`~.fleet.FleetSim`); :mod:`.metrics` — per-tier
  results; :mod:`.sweep` — the goodput sweep; :mod:`.cli` — the command.
* :mod:`.scenario`, :mod:`.workload`, :mod:`.envelope`, :mod:`.workflows` — scenarios
  (YAML), their arrivals and lengths, load envelopes, multi-call workflows.
* :mod:`.replicas` — several router replicas sharing state (``--replicas``);
  :mod:`.scaling` — servers started and stopped by the scaler (``--autoscale``).
* :mod:`.bound`, :mod:`.upper_bound`, :mod:`.upper_bound_run` — the fluid reference and
  the upper bound no router exceeds.
"""
