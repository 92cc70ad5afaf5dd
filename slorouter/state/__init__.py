"""Layer 2: the backend set (rebuilt and swapped, never mutated), the in-flight
tracker (the only writer of counters) and the snapshots policies read."""
