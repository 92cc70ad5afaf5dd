"""Workers of one host share rows through shared memory (``slorouter serve --workers N``).

One segment, one slot per worker; **one writer per slot, no locks**. A slot is a
seqlock: the writer makes its sequence number odd, writes the length and the row's
bytes, makes it even again; a reader copies the slot and keeps it only if the sequence
number was even and unchanged across the copy (else it retries, then keeps the row it
read last time). A row older than the TTL is dead (its worker stopped publishing). The
**leader** is the live worker with the lowest slot number: no lease to write, and a
dead leader is replaced one TTL later.

Layout: a 16-byte header (magic, slots, slot size) then ``slots`` slots of
``[seq u64][len u64][payload]``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from multiprocessing import shared_memory

from slorouter.proxy.syncloop import StoreError
from slorouter.state.learning import max_row_bytes
from slorouter.state.sync import Row

_MAGIC = 0x534C4F52  # "SLOR"
_HEAD = struct.Struct("<IIQ")  # magic, slots, slot size
_SLOT = struct.Struct("<QQ")  # seq, len


def slot_size_for(backends: int, tiers: int) -> int:
    """Room for a row of ``backends`` (counters, tiers, an 8-entry slack summary each) and
    of the latency model's recent observations (bounded: slorouter.state.learning)."""
    return 4096 + backends * (640 + 48 * tiers) + max_row_bytes()


class ShmSegment:
    """The segment; the parent creates it, workers attach by name."""

    def __init__(self, slots: int, slot_size: int, name: str | None = None, create: bool = True) -> None:
        self.slots = slots
        self.slot_size = slot_size
        size = _HEAD.size + slots * slot_size
        self.shm = shared_memory.SharedMemory(name=name, create=create, size=size if create else 0)
        buf = self.shm.buf
        assert buf is not None
        self.buf: memoryview = buf
        if create:
            _HEAD.pack_into(buf, 0, _MAGIC, slots, slot_size)
            for i in range(slots):
                _SLOT.pack_into(buf, self._off(i), 0, 0)
        else:
            magic, n, ss = _HEAD.unpack_from(buf, 0)
            if magic != _MAGIC or n != slots or ss != slot_size:
                raise ValueError(f"shared memory {name!r} is not a slorouter segment of {slots} slots")

    @property
    def name(self) -> str:
        return self.shm.name

    def _off(self, i: int) -> int:
        return _HEAD.size + i * self.slot_size

    def write(self, i: int, payload: bytes) -> None:
        if len(payload) > self.slot_size - _SLOT.size:
            raise StoreError(f"row of {len(payload)} bytes does not fit a {self.slot_size}-byte slot")
        buf, off = self.buf, self._off(i)
        seq = _SLOT.unpack_from(buf, off)[0]
        _SLOT.pack_into(buf, off, seq + 1, 0)  # odd: being written
        start = off + _SLOT.size
        buf[start : start + len(payload)] = payload
        _SLOT.pack_into(buf, off, seq + 2, len(payload))

    def read(self, i: int) -> bytes | None:
        """The slot's payload (``b""``: empty; None: no consistent copy in 3 tries)."""
        buf, off = self.buf, self._off(i)
        for _ in range(3):
            seq, n = _SLOT.unpack_from(buf, off)
            if seq % 2:
                continue
            start = off + _SLOT.size
            data = bytes(buf[start : start + n])
            if _SLOT.unpack_from(buf, off)[0] == seq:
                return data
        return None

    def close(self) -> None:
        del self.buf  # a memoryview into the mapping must go before the mapping can close
        self.shm.close()

    def unlink(self) -> None:
        self.shm.unlink()


class ShmStore:
    """One worker's view of the segment (a :class:`~slorouter.proxy.syncloop.LiveStore`)."""

    def __init__(self, segment: ShmSegment, slot: int, ttl_s: float) -> None:
        self.seg = segment
        self.slot = slot
        self.ttl_s = ttl_s
        self._last: dict[int, Row] = {}
        self.bad_rows = 0

    async def exchange(self, row: Row) -> Mapping[str, Row]:
        self.seg.write(self.slot, row.to_bytes())
        return self.live()

    def live(self) -> dict[str, Row]:
        out: dict[str, Row] = {}
        now = time.time()
        for i in range(self.seg.slots):
            raw = self.seg.read(i)
            if raw == b"":  # empty: never written, or withdrawn
                self._last.pop(i, None)
                continue
            r = self._last.get(i)
            if raw is not None:
                try:
                    r = self._last[i] = Row.from_bytes(raw)
                except ValueError:
                    self.bad_rows += 1
            if r is not None and now - r.at <= self.ttl_s:
                out[r.holder] = r
        return out

    async def lease(self, holder: str, ttl_s: float) -> bool:
        live = self.live()
        return bool(live) and min(live, key=_slot_of) == holder

    async def close(self) -> None:
        """Withdraw this worker's row (its share goes back at once), then detach."""
        self.seg.write(self.slot, b"")
        self.seg.close()


def holder_of(slot: int) -> str:
    return f"w{slot}"


def _slot_of(holder: str) -> int:
    return int(holder[1:]) if holder[1:].isdigit() else 1 << 30
