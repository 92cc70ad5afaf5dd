"""The SSE observer: byte-exact forwarding, token counting, usage stripping."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from slorouter.proxy.sse import Flavor, SseObserver, usage_of_body


def chat_stream(n_tokens: int, usage: bool) -> list[bytes]:
    ev = [
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
    ]
    for i in range(n_tokens):
        fin = b'"stop"' if i == n_tokens - 1 else b"null"
        ev.append(
            b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"t%d"},'
            % i
            + b'"logprobs":null,"finish_reason":'
            + fin
            + b"}]}\n\n"
        )
    if usage:
        ev.append(
            b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":7,'
            b'"total_tokens":%d,"completion_tokens":%d}}\n\n' % (7 + n_tokens, n_tokens)
        )
    ev.append(b"data: [DONE]\n\n")
    return ev


class Sink:
    def __init__(self) -> None:
        self.tokens = 0
        self.events = 0
        self.usage: list[tuple[int | None, int | None]] = []

    def on_tokens(self, n: int) -> None:
        self.tokens += n
        self.events += 1

    def on_usage(self, p: int | None, c: int | None) -> None:
        self.usage.append((p, c))


def feed_all(obs: SseObserver, data: bytes, cuts: list[int]) -> bytes:
    out = []
    prev = 0
    for c in [*sorted(set(cuts)), len(data)]:
        c = min(max(c, prev), len(data))
        out.append(obs.feed(data[prev:c]))
        prev = c
    out.append(obs.flush())
    return b"".join(out)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), cuts=st.lists(st.integers(0, 5000), max_size=40), strip=st.booleans())
def test_any_split_forwards_the_same_bytes_and_counts(n: int, cuts: list[int], strip: bool) -> None:
    events = chat_stream(n, usage=True)
    data = b"".join(events)
    sink = Sink()
    obs = SseObserver(Flavor.OPENAI, sink.on_tokens, sink.on_usage, strip_usage=strip)
    out = feed_all(obs, data, cuts)
    expected = b"".join(e for e in events if not (strip and b'"choices":[]' in e))
    assert out == expected
    assert sink.tokens == n  # role-only chunk is not a token, usage chunk is not a token
    assert sink.usage == [(7, n)]
    assert obs.done


def test_not_stripping_when_client_asked_for_usage() -> None:
    events = chat_stream(3, usage=True)
    sink = Sink()
    obs = SseObserver(Flavor.OPENAI, sink.on_tokens, sink.on_usage, strip_usage=False)
    assert obs.feed(b"".join(events)) == b"".join(events)


def test_crlf_framing_and_partial_event_held_back() -> None:
    sink = Sink()
    obs = SseObserver(Flavor.OPENAI, sink.on_tokens, sink.on_usage, strip_usage=False)
    e1 = b'data: {"choices":[{"index":0,"text":"a"}]}\r\n\r\n'
    assert obs.feed(e1[:10]) == b""
    assert obs.feed(e1[10:]) == e1
    assert sink.tokens == 1


def test_continuous_usage_counts_from_usage() -> None:
    sink = Sink()
    obs = SseObserver(Flavor.OPENAI, sink.on_tokens, sink.on_usage, strip_usage=False)
    ev = b'data: {"choices":[{"index":0,"delta":{"content":"ab"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    assert obs.feed(ev) == ev
    assert sink.tokens == 1 and sink.usage == [(3, 2)]


def test_tgi_events_count_tokens_and_details() -> None:
    sink = Sink()
    obs = SseObserver(Flavor.TGI, sink.on_tokens, sink.on_usage, strip_usage=False)
    evs = [
        b'data:{"index":%d,"token":{"id":%d,"text":"x","logprob":-0.1,"special":false},'
        b'"generated_text":null,"details":null}\n\n' % (i, i)
        for i in range(1, 4)
    ]
    evs.append(
        b'data:{"index":4,"token":{"id":4,"text":"y","logprob":-0.1,"special":false},"generated_text":"xxxy",'
        b'"details":{"finish_reason":"length","generated_tokens":4,"seed":null}}\n\n'
    )
    data = b"".join(evs)
    assert obs.feed(data) == data
    assert sink.tokens == 4 and sink.usage == [(None, 4)]


def test_usage_of_body() -> None:
    body = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
    assert usage_of_body(body) == (5, 9)
    assert usage_of_body(b'[{"generated_text":"x","details":{"generated_tokens":3}}]') == (None, 3)
    assert usage_of_body(b"not json") == (None, None)
