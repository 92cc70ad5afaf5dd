"""What every handler needs, built once by the composition root (slorouter.app).

Stored on the aiohttp application under :data:`SERVICES`. Fields that change on a
config reload (``cfg``) are replaced on this object as a whole value."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from slorouter.clock import Clock
from slorouter.config.model import RouterConfig
from slorouter.models.base import LengthView
from slorouter.models.workflows import WorkflowBook
from slorouter.proxy.dispatcher import Dispatcher
from slorouter.proxy.forward import Forwarder
from slorouter.proxy.syncloop import SyncLoop
from slorouter.state.tracker import Tracker


@dataclass(eq=False)
class Services:
    cfg: RouterConfig
    clock: Clock
    tracker: Tracker
    dispatcher: Dispatcher
    forwarder: Forwarder
    session: aiohttp.ClientSession
    lengths: LengthView
    rids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # live workflows: their deadlines (set by the first call) and stage budgets
    workflows: WorkflowBook = field(default_factory=WorkflowBook)
    passthrough_cursor: int = 0
    worker: int | None = None  # this process's index under `serve --workers N`
    syncer: SyncLoop | None = None  # the shared load picture's loop (workers, replicas)

    def next_rid(self) -> int:
        return next(self.rids)


SERVICES: web.AppKey[Services] = web.AppKey("slorouter_services", Services)
