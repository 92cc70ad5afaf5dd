"""Layer 6 tools: command implementations that combine lower layers (config check,
profiling a live backend)."""
