"""``/metrics`` of the whole host with ``slorouter serve --workers N``.

The kernel gives a scrape to whichever worker ``SO_REUSEPORT`` picks, so each worker's
``/metrics`` must answer for all of them: the host is one logical router. At a scrape the
answering worker

1. writes its own families (every collector's values, as ``/metrics`` of one process
   would show them) to its **snapshot file** — one file per worker, in a directory the
   parent created; a whole file replaced at once (``os.replace``), so a reader never sees
   half of one;
2. asks every other worker, through that worker's **pipe** (created by the parent before
   forking; an 8-byte message, atomic), to write its snapshot now, and waits for their
   replies (on its own pipe) — at most ``wait_s``;
3. merges the snapshots (:func:`merge`) and answers.

Nothing is written while requests stream or finish: a worker's only cost is one snapshot
per scrape of any worker (a few hundred µs at 20 backends). A scrape therefore counts
every request any worker had finished when the scrape arrived.

How families merge (the rule follows from what the value means):

* **counters and histograms** are summed over every worker's latest snapshot — also a
  worker that did not answer in time (its values of the last scrape: a counter never goes
  back). A worker started again in the slot of a dead one continues from the dead one's
  last snapshot (its *base*), so the host's counters stay monotonic across a worker crash
  (what the dead worker counted after its last snapshot is lost).
* **gauges of a worker's own work** (:data:`SUMMED_GAUGES`: requests it placed, tokens
  they hold, its queue, the leader flag, its share of arrivals) are summed over the
  workers that answered: the host's load.
* **the fleet view** (``slorouter_fleet_*``, exported by the leader only) is taken from
  the worker that holds the leadership, if one answered.
* **every other gauge** is one worker's own view (its health monitor, its drain, its sync
  loop's peers and age, its learned TTFT): one series per answering worker, labelled
  ``worker``.

Why not ``prometheus_client``'s multiprocess mode: it serves the library's own metric
objects, which write a memory-mapped file at every observation (our ITL histogram would
then write per token gap), while our collectors read the router's parts at scrape time
(the forwarder, the health monitor, the tracker); it keeps per-pid files that must be
cleaned up by hand, and it has no rule for "this family only from the leader".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

SUMMED_GAUGES = frozenset(
    {
        "slorouter_backend_inflight_requests",
        "slorouter_backend_inflight_tokens",
        "slorouter_queue_waiting_requests",
        "slorouter_leader",
        "slorouter_sync_share",
    }
)
FLEET_PREFIX = "slorouter_fleet_"
_SUMMED_TYPES = frozenset({"counter", "histogram", "gaugehistogram", "summary"})
_MSG = struct.Struct("<BxHI")  # kind, sender, sequence number: 8 bytes (< PIPE_BUF: atomic)
_ASK, _DONE = 1, 2

# one family as written to a snapshot: name, type, help, samples (name, labels, value)
Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]


@dataclass(frozen=True, slots=True)
class HostShare:
    """What ``slorouter serve --workers N`` gives each worker for the host's ``/metrics``:
    the directory of the snapshot files, this worker's index, and every worker's pipe
    (read and write ends, by index; the parent keeps them open, so a worker started again
    finds its pipe)."""

    directory: str
    index: int
    reads: tuple[int, ...]
    writes: tuple[int, ...]

    @property
    def workers(self) -> int:
        return len(self.reads)

    def path(self, i: int) -> Path:
        return Path(self.directory) / f"worker-{i}.json"


def families_of(collector: Collector) -> list[Family]:
    """The families ``collector`` shows now, as plain values."""
    return [
        (m.name, m.type, m.documentation, [(s.name, dict(s.labels), float(s.value)) for s in m.samples])
        for m in collector.collect()
    ]


def add_families(a: list[Family], b: list[Family]) -> list[Family]:
    """``a + b`` sample by sample (families and samples of either; order of ``a`` first)."""
    out: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for name, typ, doc, samples in (*a, *b):
        _t, _d, acc = out.setdefault(name, (typ, doc, {}))
        for sname, labels, v in samples:
            key = (sname, tuple(sorted(labels.items())))
            acc[key] = acc.get(key, 0.0) + v
    return [
        (name, typ, doc, [(s, dict(lbl), v) for (s, lbl), v in acc.items()])
        for name, (typ, doc, acc) in out.items()
    ]


def _rule(name: str, typ: str) -> str:
    if typ in _SUMMED_TYPES:
        return "sum"
    if name.startswith(FLEET_PREFIX):
        return "leader"
    if typ == "gauge" and name in SUMMED_GAUGES:
        return "sum-fresh"
    return "each"


def _is_leader(families: list[Family]) -> bool:
    return any(
        name == "slorouter_leader" and any(v >= 1 for _s, _l, v in samples)
        for name, _t, _d, samples in families
    )


def merge(snapshots: dict[int, list[Family]], fresh: Iterable[int]) -> list[Metric]:
    """The host's families from every worker's latest snapshot (``fresh``: the workers
    that answered this scrape; the others count only through their counters and
    histograms). Rules in the module docstring."""
    fresh = set(fresh)
    leaders = [i for i in sorted(fresh) if i in snapshots and _is_leader(snapshots[i])]
    leader = leaders[0] if leaders else None
    metrics: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for i in sorted(snapshots):
        for name, typ, doc, samples in snapshots[i]:
            rule = _rule(name, typ)
            if rule != "sum" and i not in fresh:
                continue  # a gauge of a worker that did not answer: not known now
            if rule == "leader" and i != leader:
                continue
            m = metrics.get(name)
            if m is None:
                m = metrics[name] = Metric(name, doc, typ)
            if rule in ("sum", "sum-fresh"):
                acc = sums.setdefault(name, {})
                for sname, labels, v in samples:
                    key = (sname, tuple(sorted(labels.items())))
                    acc[key] = acc.get(key, 0.0) + v
            elif rule == "each":
                for sname, labels, v in samples:
                    m.add_sample(sname, {**labels, "worker": str(i)}, v)
            else:
                for sname, labels, v in samples:
                    m.add_sample(sname, labels, v)
    for name, acc in sums.items():
        m = metrics[name]
        for (sname, pairs), v in acc.items():
            m.add_sample(sname, dict(pairs), v)
    return list(metrics.values())


class _Fixed:
    """A collector of families computed beforehand (one scrape's answer)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


class HostMetrics:
    """One worker's part: answers the others' requests for its snapshot, and answers a
    scrape for the host. :meth:`start` / :meth:`stop` with the app (they need its loop)."""

    def __init__(self, share: HostShare, local: Collector, wait_s: float = 0.25) -> None:
        self.share = share
        self.local = local
        self.wait_s = wait_s
        self.base = self._predecessor()
        self._seq = 0
        self._buf = b""
        self._waiting: dict[int, tuple[asyncio.Future[None], set[int]]] = {}
        self.late = 0  # scrapes that went without some worker's fresh snapshot

    def _predecessor(self) -> list[Family]:
        """The counters and histograms a dead worker of this slot had last published."""
        try:
            old = _read(self.share.path(self.share.index))
        except (OSError, ValueError):
            return []
        return [f for f in old if f[1] in _SUMMED_TYPES]

    # -- publishing --------------------------------------------------------------------------

    def own(self) -> list[Family]:
        fams = families_of(self.local)
        return add_families(fams, self.base) if self.base else fams

    def publish(self) -> list[Family]:
        fams = self.own()
        path = self.share.path(self.share.index)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "families": fams}))
        os.replace(tmp, path)
        return fams

    # -- the pipes ---------------------------------------------------------------------------

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.share.reads[self.share.index], self._readable)

    def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self.share.reads[self.share.index])
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_result(None)

    def _send(self, to: int, kind: int, seq: int) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):  # full: that worker is stuck
            os.write(self.share.writes[to], _MSG.pack(kind, self.share.index, seq))

    def _readable(self) -> None:
        fd = self.share.reads[self.share.index]
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := os.read(fd, 4096):
                self._buf += chunk
        usable = len(self._buf) - len(self._buf) % _MSG.size
        data, self._buf = self._buf[:usable], self._buf[usable:]
        asks: list[tuple[int, int]] = []
        for kind, sender, seq in _MSG.iter_unpack(data):
            if kind == _ASK:
                asks.append((sender, seq))
            elif kind == _DONE and (w := self._waiting.get(seq)) is not None:
                fut, missing = w
                missing.discard(sender)
                if not missing and not fut.done():
                    fut.set_result(None)
        if asks:
            self.publish()  # once for every request read together
            for sender, seq in asks:
                self._send(sender, _DONE, seq)

    async def gather(self) -> tuple[dict[int, list[Family]], set[int]]:
        """Every worker's snapshot, the others asked for a fresh one; and which answered."""
        me = self.share.index
        own = self.publish()
        others = {i for i in range(self.share.workers) if i != me}
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        missing = set(others)
        self._waiting[seq] = (fut, missing)
        try:
            for i in others:
                self._send(i, _ASK, seq)
            if missing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, self.wait_s)
        finally:
            del self._waiting[seq]
        fresh = {me} | (others - missing)
        if len(fresh) < self.share.workers:
            self.late += 1
        snaps: dict[int, list[Family]] = {me: own}
        for i in others:
            with contextlib.suppress(OSError, ValueError):
                snaps[i] = _read(self.share.path(i))
        return snaps, fresh

    def handler(self) -> Handler:
        """``GET /metrics`` for the host (formats and compression as for one process;
        the header ``X-Slorouter-Worker`` names the worker that answered)."""

        async def scrape(request: web.Request) -> web.StreamResponse:
            snaps, fresh = await self.gather()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Fixed(merge(snaps, fresh)))
            resp = await make_aiohttp_handler(registry)(request)
            resp.headers["X-Slorouter-Worker"] = str(self.share.index)
            return resp

        return scrape


def _read(path: Path) -> list[Family]:
    doc: Any = json.loads(path.read_text())
    fams = doc["families"]
    if not isinstance(fams, list):
        raise ValueError(f"{path}: not a snapshot")
    return [
        (str(n), str(t), str(d), [(str(s), dict(lb), float(v)) for s, lb, v in ss]) for n, t, d, ss in fams
    ]
