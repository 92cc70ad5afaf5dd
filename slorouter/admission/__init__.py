"""Layer 3: the router's admission queue (ordering of deferred requests). Pure, no I/O."""

from slorouter.admission.queue import AdmissionQueue, priority

__all__ = ["AdmissionQueue", "priority"]
