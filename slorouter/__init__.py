"""slorouter: a multi-SLO router for LLM inference.

Layers (lower never imports higher; enforced by import-linter, see pyproject.toml):

0 values, clock        immutable value types, injected time
1 config, models       typed config; latency and length models
2 state                backend set, in-flight tracker (the only writer of counters), snapshots
3 policy, admission,   pure synchronous decisions, clock injected, no I/O
  autoscale
4 proxy                upstream client, SSE observer, dispatcher, health monitor
  actuation            run-time fleet changes, the scaler's task, webhooks (above proxy)
5 http                 aiohttp handlers
6 metrics              Prometheus collectors: read every part at scrape time, written to by none
7 app, sim             composition root (wiring, reload, state file); simulated engines and
                       the offline fleet simulator
8 tools, cli
"""

__version__ = "0.1.0"
