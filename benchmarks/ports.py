"""Free ports on 127.0.0.1 for the servers a benchmark starts as child processes.

Both pick below Linux's ephemeral range (32768+), so that no outgoing connection of the
benchmark's own clients can take a port between this check and the child's bind.
"""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """One free port in 20000-29999."""
    return free_port_range(1)


def free_port_range(n: int) -> int:
    """A base port with ``n`` free consecutive ports after it (checked by binding each)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - n)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} free consecutive ports in 20000-29999")
