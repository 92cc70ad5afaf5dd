"""Layer 1: latency and length models (read by policies through the views below)."""
