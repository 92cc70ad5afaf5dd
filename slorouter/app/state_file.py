"""The learned models' state file (``models.state_file``): loaded at start, saved
every ``models.state_save_interval_s``, on ``POST /admin/save-state`` and at shutdown.
The bytes are :mod:`slorouter.models.persist`'s; this module only does the file I/O.

A missing file is a cold start; an unreadable or corrupt one is ignored with a warning
(never a crash). Writes are atomic (temporary file + rename): a crash never leaves a
torn state file."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from slorouter.clock import Clock
from slorouter.config.model import RouterConfig
from slorouter.models import persist
from slorouter.models.latency import OnlineLatency
from slorouter.models.lengths import OnlineLengths

log = logging.getLogger("slorouter")


def state_path(cfg: RouterConfig) -> Path | None:
    """``models.state_file``, relative to the config file's directory."""
    f = cfg.models.state_file
    if f is None:
        return None
    p = Path(f)
    if not p.is_absolute() and cfg.source and Path(cfg.source).is_file():
        p = Path(cfg.source).parent / p
    return p.resolve()


def load_state(path: Path, latency: OnlineLatency, lengths: OnlineLengths, clock: Clock) -> None:
    """Restore the models from ``path`` if it holds a valid state; else log why not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.info("no saved model state at %s yet: starting from the priors", path)
        return
    except OSError as e:
        log.warning("cannot read the model state %s (%s): starting from the priors", path, e)
        return
    try:
        got = persist.restore(data, latency, lengths, clock.now())
    except persist.StateError as e:
        log.warning("ignoring the model state %s (%s): starting from the priors", path, e)
        return
    log.info(
        "warm start from %s: latency of %d backends (%d observations), %d length digests",
        path,
        got["backends"],
        got["observations"],
        got["length_digests"],
    )


def save_state(path: Path, latency: OnlineLatency, lengths: OnlineLengths, clock: Clock) -> None:
    """Atomic write (temp file + rename). Raises OSError when the file cannot be written."""
    data = persist.snapshot(latency, lengths, clock.now(), time.time())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def save_periodically(interval_s: Callable[[], float], save: Callable[[], str | None]) -> None:
    """Call ``save`` every ``interval_s()`` seconds (re-read each time: a reload may change
    it) until cancelled; a failed write is logged and retried at the next interval."""
    while True:
        await asyncio.sleep(interval_s())
        try:
            save()
        except OSError as e:
            log.warning("cannot save the model state: %s", e)
