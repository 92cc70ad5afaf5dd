"""Simulated engine request rules and response bytes (no sockets)."""

from __future__ import annotations

import orjson
import pytest

from slorouter.simengine.requests import ApiError, Kind, Limits, parse_tgi, parse_vllm
from slorouter.simengine.text import RequestKey, count_text, detokenize, text_ids
from slorouter.simengine.wire import make_emitter

LIM = Limits(model="m", max_model_len=100, eos_mean=20.0, seed=1)


def test_token_counting_rule() -> None:
    assert count_text("Hello there, world!") == 5
    assert count_text("  ") == 0
    assert count_text("a_b 12 x-y") == 5  # a_b, 12, x, -, y
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert parse_vllm(Kind.CHAT, chat, LIM).prompt_tokens == 3 + (4 + 3) + (4 + 1)
    parts = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}, {"type": "image_url"}]}]
    }
    assert parse_vllm(Kind.CHAT, parts, LIM).prompt_tokens == 3 + 4 + 2
    assert parse_vllm(Kind.COMPLETION, {"prompt": "a b c"}, LIM).prompt_tokens == 4  # + BOS
    assert parse_vllm(Kind.COMPLETION, {"prompt": [5, 6]}, LIM).prompt_tokens == 2
    assert parse_vllm(Kind.COMPLETION, {"prompt": ["a b"]}, LIM).prompt_tokens == 3
    tgi = {"inputs": "a b c", "parameters": {"max_new_tokens": 5}}
    assert parse_tgi(Kind.TGI_GENERATE, tgi, LIM).prompt_tokens == 3
    assert len(text_ids("a b, c")) == 4 and text_ids("x y") == text_ids("x y")


def test_output_length_rules() -> None:
    base = {"prompt": "a", "ignore_eos": True}
    assert parse_vllm(Kind.COMPLETION, base, LIM).output_tokens == 98  # max_model_len - prompt
    assert parse_vllm(Kind.COMPLETION, {**base, "max_tokens": 500}, LIM).output_tokens == 98
    s = parse_vllm(Kind.COMPLETION, {**base, "max_tokens": 7}, LIM)
    assert (s.output_tokens, s.eos) == (7, False)
    chat = {"messages": [{"role": "user", "content": "x"}], "ignore_eos": True, "max_tokens": 9}
    assert parse_vllm(Kind.CHAT, {**chat, "max_completion_tokens": 4}, LIM).output_tokens == 4
    # EOS-drawn lengths never come before min_tokens and say why they stopped
    for i in range(50):
        s = parse_vllm(Kind.COMPLETION, {"prompt": f"q{i}", "max_tokens": 30, "min_tokens": 5}, LIM)
        assert 6 <= s.output_tokens <= 30 and (s.eos or s.output_tokens == 30)
    with pytest.raises(ApiError, match="min_tokens"):
        parse_vllm(Kind.COMPLETION, {"prompt": "a", "max_tokens": 3, "min_tokens": 4}, LIM)
    with pytest.raises(ApiError) as e:
        parse_tgi(Kind.TGI_GENERATE, {"inputs": "a", "parameters": {"max_new_tokens": 100}}, LIM)
    assert e.value.status == 422


def test_request_key_ignores_stream_options_and_follows_the_seed() -> None:
    body = {"prompt": "a", "max_tokens": 3}
    k = RequestKey.of(1, body)
    assert k == RequestKey.of(1, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert k != RequestKey.of(2, body) and k != RequestKey.of(1, {**body, "max_tokens": 4})
    assert len(k.hex16) == 16 and k.b % 2 == 1


def sse(raw: bytes) -> list[dict]:
    return [orjson.loads(e[6:]) for e in raw[:-2].split(b"\n\n") if e != b"data: [DONE]"]


@pytest.mark.parametrize("stop", [False, True])
def test_chat_stream_pieces_add_up_to_the_full_response(stop: bool) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 40}
    body["ignore_eos"] = not stop
    for i in range(40):  # find a request whose drawn EOS comes before max_tokens, or not
        spec = parse_vllm(Kind.CHAT, {**body, "seed_" + str(i): 0}, LIM)
        if spec.eos == stop:
            break
    em, n = make_emitter(spec), spec.output_tokens
    raw = b"".join(em.token(i) for i in range(n - 1)) + em.final(n)
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = sse(raw)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    full = orjson.loads(em.body(n))
    assert full["choices"][0]["message"]["content"] == text
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert full["choices"][0]["finish_reason"] == ("stop" if stop else "length")
    assert count_text(text) == (n - 1 if stop else n)  # an EOS token has no text
    if stop:
        assert chunks[-1]["choices"][0]["delta"]["content"] == ""
    assert len({c["id"] for c in chunks}) == 1 and detokenize([10, 11]) != ""


def test_single_token_stream_carries_the_role_chunk_and_usage() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 1}
    body |= {"ignore_eos": True, "stream_options": {"include_usage": True}}
    spec = parse_vllm(Kind.CHAT, body, LIM)
    chunks = sse(make_emitter(spec).final(1))
    assert len(chunks) == 3 and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 8, "total_tokens": 9, "completion_tokens": 1}


@pytest.mark.parametrize("kind", [Kind.CHAT, Kind.COMPLETION, Kind.TGI_CHAT])
def test_fast_path_parts_rebuild_the_token_chunks(kind: Kind) -> None:
    from slorouter.simengine.text import VOCAB_B, VOCAB_SIZE

    body = {"messages": [{"role": "user", "content": "x"}], "prompt": "x", "max_tokens": 9, "stream": True}
    spec = parse_vllm(kind, body, LIM) if kind is not Kind.TGI_CHAT else parse_tgi(kind, body, LIM)
    em = make_emitter(spec)
    assert em.parts is not None
    pre, post = em.parts
    for i in range(1, 8):
        assert pre + VOCAB_B[(em.a + i * em.b) % VOCAB_SIZE] + post == em.token(i)
    cu = parse_vllm(
        Kind.CHAT, {**body, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}, LIM
    )
    assert make_emitter(cu).parts is None  # usage differs per chunk: no fast path
