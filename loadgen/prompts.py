"""Prompt synthesis: text of approximately N tokens.

Method: a prompt of N tokens is N words drawn from a list of short, common, lower-case
English words, separated by single spaces, with no punctuation. Under the simulated
engine's rule (one token per match of the regex ``\\w+|[^\\w\\s]``) every word is exactly
one token, so the count is exact there. Against a real BPE tokenizer (GPT-2, Llama,
Qwen, ...) these words are single tokens with their leading space, so the count is
close (typically within a few percent, plus the chat template's own tokens); the
server's ``usage.prompt_tokens`` is what the report uses when the server sends it.
The server's own additions (chat template, BOS) are the workload's
``prompt_overhead_tokens``, subtracted from each target (at least one word is sent).

Each prompt starts at a random place of a seeded word pool, so prompts differ from
their first word (no accidental prefix-cache hits between requests) and runs are
reproducible.
"""

from __future__ import annotations

import random

WORDS = (  # noqa: SIM905
    "the of and to in is was for on are as with his they at be this from have or one had by but "
    "not what all were we when your can said there use each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two "
    "more write go see number no way could people my than first water been call who its now find "
    "long down day did get come made may part over new sound take only little work know place year "
    "live me back give most very after thing our just name good sentence man think say great where "
    "help through much before line right too mean old any same tell boy follow came want show also "
    "around form three small set put end does another well large must big even such because turn "
    "here why ask went men read need land different home us move try kind hand picture again change "
    "off play spell air away animal house point page letter mother answer found study still learn "
    "should world high every near add food between own below country plant last school father keep "
    "tree never start city earth eye light thought head under story saw left few while along might "
    "close something seem next hard open example begin life always those both paper together got "
    "group often run important until children side feet car mile night walk white sea began grow "
    "took river four carry state once book hear stop without second later miss idea enough eat face "
    "watch far real almost let above girl sometimes mountain cut young talk soon list song being "
    "leave family"
).split()

POOL_SIZE = 1 << 16


class PromptMaker:
    """Makes prompt strings of a given word (= token) count from a seeded pool."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self._pool = rng.choices(WORDS, k=POOL_SIZE)
        self._rng = rng

    def make(self, n_tokens: int) -> str:
        n = max(1, n_tokens)
        start = self._rng.randrange(POOL_SIZE)
        pool = self._pool
        if start + n <= POOL_SIZE:
            return " ".join(pool[start : start + n])
        words: list[str] = []
        while len(words) < n:
            take = min(n - len(words), POOL_SIZE - start)
            words.extend(pool[start : start + take])
            start = 0
        return " ".join(words)


def count_sim_tokens(text: str) -> int:
    """Token count under the simulated engine's documented rule (for tests and docs)."""
    import re

    return len(re.findall(r"\w+|[^\w\s]", text))
