"""The SSE observer: reads an engine's event stream to count tokens and read ``usage``,
without deciding what the client receives (except the one usage chunk the router
itself asked for, which it strips so the client's stream is what the engine would
have sent it directly).

Hot path: one call per upstream read. Each complete event (terminated by a blank
line) is classified by byte scans; only events that carry a non-null ``usage`` are
parsed (orjson). Partial events are held until their terminator arrives, so the
client receives whole events exactly as the engine framed them, with no added delay
beyond the engine's own write of that event. A read that is exactly one ordinary
token event (the streaming case: one engine step, one read) is classified in place
and returned as the same object (no copy, no list). Output events are reported once
per read: ``on_tokens(n)`` for the ``n`` of them (the tracker takes a chunk of ``n``
tokens), always before the ``usage`` that follows them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import Final

import orjson

_DONE: Final = b"data: [DONE]"
_USAGE_MARKS: Final = (b'"usage":{', b'"usage": {')
_EMPTY_CHOICES: Final = (b'"choices":[]', b'"choices": []')
_ROLE: Final = b'"role"'
_EMPTY_CONTENT: Final = (b'"content":""', b'"content": ""')
_TGI_TOKEN: Final = b'"token":'
_FINISH: Final = (b'"finish_reason":"', b'"finish_reason": "')
_NO_FINISH: Final = b'"finish_reason":null'  # vLLM's ordinary chunk: found early, saves two scans


def _with_fingerprint(event: bytes, fp: str) -> bytes:
    """``event`` with ``"system_fingerprint":fp`` added as the last key of its JSON."""
    body = event.rstrip(b"\r\n")
    if not body.endswith(b"}"):
        return event
    return body[:-1] + b',"system_fingerprint":' + orjson.dumps(fp) + b"}" + event[len(body) :]


class Flavor(Enum):
    OPENAI = "openai"  # vLLM / OpenAI chat.completion.chunk and text_completion events
    TGI = "tgi"  # TGI /generate_stream events


TokenSink = Callable[[int], None]
UsageSink = Callable[[int | None, int | None], None]


def _find_end(buf: bytes | bytearray, start: int) -> tuple[int, int]:
    """Position and length of the first event terminator at/after ``start``. The CRLF
    search is bounded by the LF hit, so a read of many events stays linear."""
    a = buf.find(b"\n\n", start)
    b = buf.find(b"\r\n\r\n", start, len(buf) if a == -1 else a + 3)
    if b != -1 and (a == -1 or b < a):
        return b, 4
    return a, 2


class SseObserver:
    """Feed upstream bytes; get back the bytes to forward to the client.

    ``on_tokens(n)`` is called once per read for the ``n`` events in it that carry
    output (an event is one engine step for this request); ``on_usage(prompt,
    completion)`` when a usage object is seen.
    ``strip_usage`` drops the final usage-only event (``choices: []``) that the
    router requested on the client's behalf.
    """

    __slots__ = (
        "_buf",
        "_flavor",
        "_held",
        "_on_tokens",
        "_on_usage",
        "_openai",
        "_pending",
        "_strip",
        "done",
        "events",
        "usage_seen",
    )

    def __init__(self, flavor: Flavor, on_tokens: TokenSink, on_usage: UsageSink, strip_usage: bool) -> None:
        self._flavor = flavor
        self._on_tokens = on_tokens
        self._on_usage = on_usage
        self._strip = strip_usage
        self._openai = flavor is Flavor.OPENAI
        self._pending = 0  # output events of the current read not yet reported
        self._buf = bytearray()
        self._held: list[bytes] = []
        self.done = False
        self.events = 0
        self.usage_seen = False

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        if (
            not buf
            and self._openai
            and data.startswith(b"data: {")
            and data.find(b"\n") == len(data) - 2  # one line then the blank one (a memchr)
            and data.endswith(b"\n\n")
            and b'"choices"' in data
            and b'"usage"' not in data
            and not self._held
        ):  # one whole ordinary event: the streaming case
            self.events += 1
            if _ROLE not in data or not (_EMPTY_CONTENT[0] in data or _EMPTY_CONTENT[1] in data):
                self._on_tokens(1)
            if self._strip and _NO_FINISH not in data and (_FINISH[0] in data or _FINISH[1] in data):
                self._held.append(data)  # see _route
                return b""
            return data
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        out: list[bytes] = []
        pos = 0
        while True:
            end, n = _find_end(src, pos)
            if end == -1:
                break
            nxt = end + n
            self._route(src[pos:nxt] if pos or nxt != len(src) or buf else data, out)
            pos = nxt
        if self._pending:
            self._report()
        rest = src[pos:]
        if rest:
            self._buf = bytearray(rest)
        elif buf:
            self._buf = bytearray()
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _report(self) -> None:
        n, self._pending = self._pending, 0
        self._on_tokens(n)

    def flush(self) -> bytes:
        """At end of stream: whatever is held or partial, unchanged."""
        if self._pending:
            self._report()
        rest = b"".join(self._held) + bytes(self._buf)
        self._held = []
        self._buf = bytearray()
        return rest

    def _route(self, event: bytes | bytearray, out: list[bytes]) -> None:
        """Account for one event (``event`` includes its terminator) and decide where it goes.

        When stripping the router's usage chunk, a terminal chunk (``finish_reason``
        set) is held until the next event: vLLM stamps ``system_fingerprint`` on the
        terminal chunk only when no usage chunk follows, and on the usage chunk
        otherwise — so the router moves it back where the client would have seen it.
        """
        event = bytes(event)
        self.events += 1
        if not self._openai:  # TGI
            if _TGI_TOKEN in event:
                self._pending += 1
                if b'"generated_tokens"' in event:
                    self._report()
                    self._read_tgi_details(event)
            out.append(event)
            return
        if event.startswith(_DONE):
            self.done = True
        elif _USAGE_MARKS[0] in event or _USAGE_MARKS[1] in event:
            usage_only = _EMPTY_CHOICES[0] in event or _EMPTY_CHOICES[1] in event
            if not usage_only:
                self._count(event)
            if self._pending:
                self._report()  # the tokens before (and in) this event come before its usage
            obj = self._read_usage(event)
            if usage_only and self._strip:
                fp = obj.get("system_fingerprint") if isinstance(obj, dict) else None
                for held in self._held:
                    out.append(_with_fingerprint(held, fp) if isinstance(fp, str) else held)
                self._held = []
                return
        elif b'"choices"' in event:
            self._count(event)
            if self._strip and (_FINISH[0] in event or _FINISH[1] in event):
                self._held.append(event)
                return
        if self._held:
            out.extend(self._held)
            self._held = []
        out.append(event)

    def _count(self, event: bytes) -> None:
        if not (_ROLE in event and (_EMPTY_CONTENT[0] in event or _EMPTY_CONTENT[1] in event)):
            self._pending += 1

    def _payload(self, event: bytes) -> object:
        i = event.find(b"data:")
        if i == -1:
            return None
        try:
            return orjson.loads(event[i + 5 :])
        except orjson.JSONDecodeError:
            return None

    def _read_usage(self, event: bytes) -> object:
        obj = self._payload(event)
        if isinstance(obj, dict):
            u = obj.get("usage")
            if isinstance(u, dict):
                self.usage_seen = True
                p, c = u.get("prompt_tokens"), u.get("completion_tokens")
                self._on_usage(p if isinstance(p, int) else None, c if isinstance(c, int) else None)
        return obj

    def _read_tgi_details(self, event: bytes) -> None:
        obj = self._payload(event)
        if isinstance(obj, dict):
            d = obj.get("details")
            if isinstance(d, dict):
                c = d.get("generated_tokens")
                if isinstance(c, int):
                    self.usage_seen = True
                    self._on_usage(None, c)


_USAGE_OBJECT: Final = re.compile(rb'"usage": ?(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})\s*\}\s*$')


def usage_of_body(body: bytes) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from a non-streaming OpenAI or TGI response body.

    An OpenAI-style body ends with its ``usage`` object (vLLM's and OpenAI's do): then
    only that object is parsed, not the whole body (the generated text). A ``"usage":``
    that ends the body can only be the top-level key: inside a JSON string its quotes
    would be escaped. Anything else is parsed whole."""
    i = body.rfind(b'"usage":')
    if i != -1:
        m = _USAGE_OBJECT.match(body, i)
        if m is not None:
            try:
                u = orjson.loads(m.group(1))
            except orjson.JSONDecodeError:
                u = None
            if isinstance(u, dict):
                p, c = u.get("prompt_tokens"), u.get("completion_tokens")
                return (p if isinstance(p, int) else None, c if isinstance(c, int) else None)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if isinstance(obj, list) and obj:  # TGI /generate may answer a list
        obj = obj[0]
    if not isinstance(obj, dict):
        return None, None
    u = obj.get("usage")
    if isinstance(u, dict):
        p, c = u.get("prompt_tokens"), u.get("completion_tokens")
        return (p if isinstance(p, int) else None, c if isinstance(c, int) else None)
    d = obj.get("details")
    if isinstance(d, dict):
        c = d.get("generated_tokens")
        return None, c if isinstance(c, int) else None
    return None, None
