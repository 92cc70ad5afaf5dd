"""Layer 4: metrics exporters (Prometheus text exposition)."""
