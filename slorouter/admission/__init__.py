"""Layer 3: admission — the one synchronous decision path (:mod:`.core`) the live proxy
and the fleet simulator both drive, and its queue of deferred requests (:mod:`.queue`).
Pure, no I/O."""

from slorouter.admission.core import AdmissionCore, DecisionLog
from slorouter.admission.priority import priority
from slorouter.admission.queue import AdmissionQueue

__all__ = ["AdmissionCore", "AdmissionQueue", "DecisionLog", "priority"]
