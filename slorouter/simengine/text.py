"""Deterministic tokens and text for the simulated engines (pure; no I/O).

Tokenization rule (the load generator synthesizes prompts with the same rule)
------------------------------------------------------------------------------
* ``count_text(s)`` = number of matches of ``\\w+|[^\\w\\s]`` in ``s``: every run of word
  characters is one token, every other non-space character is one token, spaces are free.
* ``/v1/completions`` with a string prompt: ``1 + count_text(prompt)`` (a BOS token);
  with a token-id list: its length (as given, no BOS).
* ``/v1/chat/completions``: ``CHAT_PRIMER + Σ (CHAT_PER_MESSAGE + count_text(content))``
  over the messages (content as a string, or the ``text`` of ``{"type": "text"}`` parts),
  i.e. 3 + 4 per message + the words.
* TGI ``inputs``: ``count_text(inputs)`` (no BOS).

Output tokens come from a fixed vocabulary of :data:`VOCAB_SIZE` pseudo-words (``" bako"``,
each one ``\\w+`` run with a leading space, so generated text re-tokenizes to the same
count). Request ``r``'s token ``i`` is ``VOCAB[(a + i·b) mod VOCAB_SIZE]`` where ``a`` and
odd ``b`` come from the request key. Token id of vocabulary entry ``k`` is ``k + ID_OFFSET``;
ids below that are special (1 BOS, 2 EOS).

Request key: ``blake2b(seed ‖ canonical JSON of the body without "stream" and
"stream_options")``. The response id, ``created``, token text and the EOS-drawn length are
functions of it, so the same request gets byte-identical answers, streamed or not, with or
without usage chunks (which is what a router that adds ``include_usage`` needs).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from typing import Any

import orjson

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
CHAT_PRIMER = 3
CHAT_PER_MESSAGE = 4
VOCAB_SIZE = 4096  # a power of two: (a + i*b) mod V with odd b visits every entry
ID_OFFSET = 10
BOS_ID, EOS_ID = 1, 2
CREATED_BASE = 1_750_000_000

_SYL = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]  # 75 syllables
VOCAB: tuple[str, ...] = tuple(" " + _SYL[k % 75] + _SYL[(k // 75) % 75] for k in range(VOCAB_SIZE))
VOCAB_B: tuple[bytes, ...] = tuple(w.encode() for w in VOCAB)  # JSON-safe as is (ASCII letters)
TOKEN_BYTES = 5  # every vocabulary entry is " " + 2 syllables: constant-size token chunks
assert all(len(w) == TOKEN_BYTES for w in VOCAB_B)


def count_text(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def text_ids(text: str) -> list[int]:
    """Token ids of a text under the rule above (stable, deterministic)."""
    out = []
    for tok in TOKEN_RE.findall(text):
        h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=4).digest(), "little")
        out.append(ID_OFFSET + h % VOCAB_SIZE)
    return out


def detokenize(ids: list[int]) -> str:
    return "".join(VOCAB[(i - ID_OFFSET) % VOCAB_SIZE] if i >= ID_OFFSET else "" for i in ids)


def message_text(content: Any) -> str | None:
    """The text of a chat message's content; None if it is not of an accepted shape."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict):
                return None
            if p.get("type") == "text":
                t = p.get("text")
                if not isinstance(t, str):
                    return None
                parts.append(t)
        return "\n".join(parts)
    return None


@dataclass(frozen=True, slots=True)
class RequestKey:
    """What is derived from (seed, body): id suffix, created time, token sequence, EOS draw."""

    hex16: str  # 16 hex digits, like vLLM's request ids
    created: int
    a: int
    b: int  # odd
    rng_seed: int

    @staticmethod
    def of(seed: int, body: dict[str, Any]) -> RequestKey:
        canon = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        try:
            data = orjson.dumps(canon, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        except TypeError:  # e.g. integers beyond 64 bits: fall back to repr
            data = repr(sorted(canon.items())).encode()
        d = hashlib.blake2b(seed.to_bytes(8, "little", signed=True) + data, digest_size=24).digest()
        return RequestKey(
            hex16=d[:8].hex(),
            created=CREATED_BASE + int.from_bytes(d[8:12], "little") % 100_000_000,
            a=int.from_bytes(d[12:14], "little") % VOCAB_SIZE,
            b=(int.from_bytes(d[14:16], "little") % VOCAB_SIZE) | 1,
            rng_seed=int.from_bytes(d[16:24], "little"),
        )

    def token_index(self, i: int) -> int:
        return (self.a + i * self.b) % VOCAB_SIZE

    def text(self, n: int) -> str:
        a, b = self.a, self.b
        return "".join([VOCAB[(a + i * b) % VOCAB_SIZE] for i in range(n)])

    def eos_length(self, mean: float) -> int:
        """An output length ending at EOS: geometric with this mean (>= 1)."""
        if mean <= 1:
            return 1
        u = random.Random(self.rng_seed).random()
        return 1 + int(math.log(1.0 - u) / math.log(1.0 - 1.0 / mean))
