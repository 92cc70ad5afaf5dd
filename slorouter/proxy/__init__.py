"""Layer 4: talking to engines — request preparation, the upstream client, the SSE
observer, forwarding with failover, and the admission dispatcher."""
