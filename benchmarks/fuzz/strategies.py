"""Hypothesis strategies for hostile HTTP requests to the router, and a raw-socket client.

A :class:`FuzzRequest` is rendered byte by byte (:meth:`FuzzRequest.render`), so header
names, values, framing and bodies can be anything a client could send — not only what
an HTTP library would let through. Bodies range from almost-valid OpenAI/TGI requests
with one field wrong, through arbitrary JSON, to raw bytes; headers mix the ones the
router reads (tier header, keys, workflow id, content and hop-by-hop headers) with
random ones. Shared by ``tests/fuzz`` (a fast sample) and :mod:`benchmarks.fuzz.main`
(``scripts/fuzz.py``, ≥ 10,000).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass

import orjson
from hypothesis import strategies as st

ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/generate",
    "/generate_stream",
    "/v1/models",
    "/health",
    "/metrics",
    "/tokenize",
    "/detokenize",
    "/admin/reload",
    "/admin/backends",
    "/admin/drain",
    "/admin/undrain",
    "/v1/embeddings",
]
GENERATION = ["/v1/chat/completions", "/v1/completions", "/generate", "/generate_stream"]
TIERS = ["interactive", "standard", "batch", "nope", "", "INTERACTIVE"]
MODELS = ["sim-llama", "sim-llama@interactive", "sim-llama@batch", "fast", "@", "x@y@z", ""]


def _weighted(*pairs: tuple[int, st.SearchStrategy[object]]) -> st.SearchStrategy[object]:
    """Pick a branch with the given integer weights (``one_of`` does not weight)."""
    table = [strategy for w, strategy in pairs for _ in range(w)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


_token_chars = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=_token_chars, min_size=1, max_size=24)
# header values: visible ASCII, spaces, tabs and obs-text (latin-1), never CR/LF
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=64
) | st.sampled_from(
    ["", " ", "close", "keep-alive", "chunked", "gzip", "100-continue", "application/json", "text/plain"]
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
small_ints = st.integers(min_value=-3, max_value=40)


def _maybe(value: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Mostly ``value``, sometimes any JSON value instead."""
    return st.one_of(value, value, value, json_values)


texts = st.text(max_size=60)
valid_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": texts | st.just("hello there")}
    ),
    min_size=1,
    max_size=3,
)
messages = _maybe(
    valid_messages
    | st.lists(
        st.fixed_dictionaries(
            {"role": _maybe(st.sampled_from(["user", "system"]))},
            optional={
                "content": _maybe(
                    texts
                    | st.lists(
                        st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}),
                        max_size=3,
                    )
                )
            },
        )
        | json_values,
        max_size=4,
    )
)
common_optional = {
    "model": _maybe(st.sampled_from(MODELS)),
    "max_tokens": _maybe(small_ints),
    "max_completion_tokens": _maybe(small_ints),
    "stream": _maybe(st.booleans()),
    "stream_options": _maybe(st.fixed_dictionaries({}, optional={"include_usage": _maybe(st.booleans())})),
    "n": _maybe(st.integers(min_value=-1, max_value=3)),
    "temperature": json_values,
    "ignore_eos": _maybe(st.booleans()),
    "stop": json_values,
}
valid_chat = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS[:3]), "messages": valid_messages, "max_tokens": st.integers(1, 24)},
    optional={
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
valid_completion = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS[:3]), "prompt": texts.filter(bool), "max_tokens": st.integers(1, 24)},
    optional={"stream": st.booleans()},
)
valid_tgi = st.fixed_dictionaries(
    {
        "inputs": texts.filter(bool),
        "parameters": st.fixed_dictionaries({"max_new_tokens": st.integers(1, 24)}),
    },
    optional={"stream": st.booleans()},
)


def _mutate(body: dict[str, object], key: str, junk: object) -> dict[str, object]:
    """One field replaced by junk (or a new junk field)."""
    keys = list(body)
    target = keys[sum(map(ord, key)) % len(keys)] if key and keys else key
    return {**body, target: junk}


mutated = st.builds(
    _mutate, st.one_of(valid_chat, valid_completion, valid_tgi), st.text(max_size=8), json_values
)
chat_bodies = st.fixed_dictionaries({"messages": messages}, optional=common_optional)
completion_bodies = st.fixed_dictionaries(
    {
        "prompt": _maybe(
            texts | st.lists(st.integers(0, 300), max_size=8) | st.lists(st.text(max_size=8), max_size=3)
        )
    },
    optional=common_optional,
)
tgi_bodies = st.fixed_dictionaries(
    {"inputs": _maybe(texts)},
    optional={
        "parameters": _maybe(
            st.fixed_dictionaries(
                {}, optional={"max_new_tokens": _maybe(small_ints), "details": _maybe(st.booleans())}
            )
        ),
        "stream": _maybe(st.booleans()),
    },
)


def _dumps(v: object) -> bytes:
    try:
        return orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # e.g. integers beyond 64 bits: as text
        return repr(v).encode()


bodies = _weighted(
    (3, valid_chat.map(_dumps)),
    (2, valid_completion.map(_dumps)),
    (2, valid_tgi.map(_dumps)),
    (5, mutated.map(_dumps)),
    (3, st.one_of(chat_bodies, completion_bodies, tgi_bodies).map(_dumps)),
    (1, json_values.map(_dumps)),
    (1, st.binary(max_size=200)),
    (
        1,
        st.sampled_from(
            [
                b"",
                b"{",
                b"null",
                b"[]",
                b'{"messages":[{"role":"user","content":"x"}]' + b" " * 10,
                b"\xef\xbb\xbf{}",
            ]
        ),
    ),
)
known_headers = st.sampled_from(
    [
        "x-slo-tier",
        "Authorization",
        "x-api-key",
        "x-slo-workflow-id",
        "Content-Type",
        "Content-Encoding",
        "Accept-Encoding",
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "Expect",
        "Cookie",
        "X-Forwarded-For",
        "Host",
        "Range",
    ]
)
header_lists = st.lists(
    _weighted(
        (3, st.tuples(known_headers, header_values)),
        (1, st.tuples(tokens, header_values)),
        (3, st.tuples(st.just("x-slo-tier"), st.sampled_from(TIERS))),
        (
            2,
            st.tuples(
                st.just("Authorization"),
                st.sampled_from(
                    ["Bearer sk-fuzz-key", "Bearer", "Basic x", "bearer  sk-fuzz-key ", "Bearer sk-nope"]
                ),
            ),
        ),
    ),
    max_size=6,
)


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    framing: str  # "length" | "chunked" | "none" | "short" (Content-Length below the body size)

    def render(self) -> bytes:
        head = [f"{self.method} {self.path} HTTP/1.1", "Host: 127.0.0.1"]
        head += [
            f"{k}: {v}"
            for k, v in self.headers
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "host")
        ]
        body = self.body
        if self.framing == "length":
            head.append(f"Content-Length: {len(body)}")
        elif self.framing == "short":
            head.append(f"Content-Length: {len(body) // 2}")
        elif self.framing == "chunked":
            head.append("Transfer-Encoding: chunked")
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:7], body[7:]) if c) + b"0\r\n\r\n"
        head.append("Connection: close")
        return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


paths = _weighted(
    (12, st.sampled_from(GENERATION)),
    (5, st.sampled_from(ROUTES)),
    (1, st.sampled_from(ROUTES).map(lambda p: p + "?x=1&y=%00")),
    (2, st.text(alphabet=_token_chars + "/%?=&", min_size=1, max_size=30).map(lambda p: "/" + p)),
)
# a body that matches its route (most requests get past the first checks), or any pairing
matched = _weighted(
    (
        3,
        st.tuples(
            st.just("/v1/chat/completions"),
            _weighted((2, valid_chat), (3, mutated), (1, chat_bodies)).map(_dumps),
        ),
    ),
    (
        2,
        st.tuples(
            st.just("/v1/completions"),
            _weighted((2, valid_completion), (3, mutated), (1, completion_bodies)).map(_dumps),
        ),
    ),
    (
        2,
        st.tuples(
            st.sampled_from(["/generate", "/generate_stream"]),
            _weighted((2, valid_tgi), (3, mutated), (1, tgi_bodies)).map(_dumps),
        ),
    ),
)
path_and_body = _weighted((3, matched), (2, st.tuples(paths, bodies)))


def _request(
    method: str, pb: tuple[str, bytes], headers: tuple[tuple[str, str], ...], framing: str
) -> FuzzRequest:
    return FuzzRequest(method, pb[0], headers, pb[1], framing)


fuzz_requests = st.builds(
    _request,
    method=_weighted(
        (16, st.just("POST")),
        (3, st.sampled_from(["GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])),
        (1, tokens),
    ),
    pb=path_and_body,
    headers=_weighted((3, st.just(())), (7, header_lists.map(tuple))),
    framing=_weighted(
        (16, st.just("length")), (2, st.just("chunked")), (1, st.just("none")), (1, st.just("short"))
    ),
)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: not an HTTP response
    seconds: float
    hung: bool
    raw_head: bytes


def send(port: int, req: FuzzRequest, timeout_s: float = 10.0) -> Answer:
    """Send one rendered request on a fresh connection; read until the server closes."""
    t0 = time.monotonic()
    chunks: list[bytes] = []
    hung = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        with contextlib.suppress(OSError):  # the server may close early (a 400 on the headers)
            s.sendall(req.render())
        s.settimeout(max(0.1, timeout_s - (time.monotonic() - t0)))
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if time.monotonic() - t0 > timeout_s:
                    hung = True
                    break
        except TimeoutError:
            hung = True
        except OSError:  # reset after the answer
            pass
    raw = b"".join(chunks)
    status: int | None = None
    rest = raw
    while rest:  # the final status, after any 1xx interim answers (100 Continue)
        head, _, after = rest.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if not (len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit()):
            break
        status = int(parts[1])
        if status >= 200:
            break
        rest = after
    return Answer(status, time.monotonic() - t0, hung, raw[:300])
