"""The idle watchdog of a streamed engine response: one timer per stream, never one per
chunk.

aiohttp's own read timeout (``ClientTimeout(sock_read=...)``, the connection protocol's
``read_timeout``) cancels and re-creates a timer on every chunk that arrives (about
2.5 µs per streamed token with uvloop). The watchdog instead keeps the time of the last
read (``last``, one ``loop.time()`` per read, set by the reader) and one timer that
fires ``idle_s`` after it; when it fires it re-arms itself at ``last + idle_s`` if a
read came since, and only a true silence fails the stream: the response's body reader
gets :class:`aiohttp.ServerTimeoutError`, which the pending read raises.

While the reader is ``busy`` (waiting on the client, which has its own bound), the
watchdog does not fire: the silence is then the client's, not the engine's.
"""

from __future__ import annotations

import asyncio

import aiohttp


class IdleWatchdog:
    __slots__ = ("_content", "_idle_s", "_loop", "_timer", "busy", "last")

    def __init__(self, loop: asyncio.AbstractEventLoop, content: aiohttp.StreamReader, idle_s: float) -> None:
        self._loop = loop
        self._content = content
        self._idle_s = idle_s
        self.busy = False
        self.last = loop.time()
        self._timer: asyncio.TimerHandle | None = loop.call_at(self.last + idle_s, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        due = (now if self.busy else self.last) + self._idle_s
        if due > now:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._timer = None
        self._content.set_exception(aiohttp.ServerTimeoutError(f"no data for {self._idle_s:g} s"))

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
