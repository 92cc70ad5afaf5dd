"""Fuzzing the live router: ``strategies`` (the hypothesis corpus of hostile requests and the
raw-socket sender), ``stack`` (the router and two simulated engines as processes), ``main``
(the ≥ 10,000-input driver, ``scripts/fuzz.py``). ``tests/fuzz`` runs a fast sample of the
same corpus against the same stack."""
