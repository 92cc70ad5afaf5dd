"""slorouter-loadgen: a tier-aware load generator for OpenAI-compatible servers.

It is a client: it never imports the router's internals."""
