"""Warm restart: the learned latency and length models to bytes and back (pure, no I/O).

The file is JSON: ``{"format": 3, "saved_at": <wall time>, "latency": ..., "lengths": ...}``
where ``latency`` and ``lengths`` are the models' own ``to_state`` (each part of a model
owns its explicit, versioned state: :mod:`slorouter.models.saved`):

* latency, per backend id: the pace fit (decayed normal equations, fitted coefficients),
  the quantile ratio and its digest, every load bucket's t-digest and decayed load, the
  window pool, the TTFT-excess sums, counts; and the fleet-wide prompt tokens per output
  token. The *prior* (profile or engine defaults) and the settings are not saved: they
  come from the config of the router that loads; derived values (the pace coefficients,
  the limits with the TTFT excess) are recomputed;
* lengths: every (tier, key id, model) t-digest of output lengths.

Time: clocks are monotonic per process, so each stamp is saved as an age (``now -
stamp``) and restored relative to the loading process's ``now``. The time the router
was down is **not** counted as forgetting: a restart neither ages nor refreshes what
was learned; forgetting resumes with the next observations.

:func:`restore` checks everything before changing anything and raises
:class:`StateError` on a file it cannot use (another format, corrupt numbers), saying
where; the router then starts from the priors and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from slorouter.models.latency import OnlineLatency
from slorouter.models.lengths import OnlineLengths
from slorouter.models.saved import StateError

FORMAT = 3
OLDER_FORMATS = {2: "before the models' parts had their own state"}  # read by no router now

__all__ = ["FORMAT", "StateError", "restore", "snapshot"]


def snapshot(latency: OnlineLatency, lengths: OnlineLengths, now: float, wall_time: float) -> bytes:
    """Everything learned, as JSON bytes."""
    return orjson.dumps(
        {
            "format": FORMAT,
            "saved_at": wall_time,
            "latency": latency.to_state(now),
            "lengths": lengths.to_state(now),
        }
    )


def restore(data: bytes, latency: OnlineLatency, lengths: OnlineLengths, now: float) -> dict[str, Any]:
    """Load :func:`snapshot` bytes into the models; returns a summary. Raises
    :class:`StateError` (and changes nothing) when the data cannot be used."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise StateError(f"not JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise StateError("the top level must be an object")
    fmt = raw.get("format")
    if fmt in OLDER_FORMATS:
        raise StateError(
            f"format {fmt} was written by an older slorouter ({OLDER_FORMATS[fmt]}); this one reads "
            f"format {FORMAT}: the models start from their priors and the next save replaces the "
            "file (copy it aside first to keep it)"
        )
    if fmt != FORMAT:
        raise StateError(f"unknown format {fmt!r} (this router reads format {FORMAT})")
    lat = latency.from_state(raw.get("latency"), now)
    lens = lengths.from_state(raw.get("lengths"), now)
    latency.adopt(lat)
    lengths.adopt(lens)
    saved = raw.get("saved_at")
    return {
        "backends": len(lat.backends),
        "length_digests": len(lens),
        "observations": sum(b.fit.observations for b in lat.backends.values()),
        "saved_at": saved if isinstance(saved, int | float) else None,
    }
