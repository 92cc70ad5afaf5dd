"""Layer 3: admission decisions (pure, synchronous)."""
