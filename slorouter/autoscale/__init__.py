"""Layer 3: autoscale decisions (pure, synchronous)."""
