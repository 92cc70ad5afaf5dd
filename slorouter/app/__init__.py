"""The composition root: the only place long-lived objects are built and connected.

==================  ==================================================================
``build``           :func:`build_app` (every part, routes, background work) and
                    :func:`runner_for` (the server's client-facing limits)
``parts``           the parts a config determines, built at start and on reload
``reload``          hot reload: validate a re-read config, then apply it
``state_file``      the learned models' state file: load at start, save periodically
==================  ==================================================================
"""

from slorouter.app.build import build_app, runner_for

__all__ = ["build_app", "runner_for"]
